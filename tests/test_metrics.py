"""Watching it run: ``/metrics`` read back from what real workers did on a private redis-server,
the counters behind it, the broker marked down when Redis is gone, and the workers' log lines in
text and JSON."""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image

from support.cluster import RedisServer, Worker
from support.metrics import by, scrape
from zoomq import logs
from zoomq.config import settings
from zoomq.errors import InvalidParameter
from zoomq.node.processes import free_port
from zoomq.producer import Producer
from zoomq.queue import stats
from zoomq.queue.celery_app import TASK_KEYFRAME, render_queue
from zoomq.queue.job_records import Jobs
from zoomq.web import create_app
from zoomq.worker import lease, watchdog


@dataclass
class Ran:
    client: object
    producer: Producer
    good: str
    broken: str
    waiting: str
    log: Path
    worker: str


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_t2i):
    """One real worker (logging JSON) has rendered one image job and failed another, whose init
    image was deleted from the store before any worker was up; a third job waits for a model
    nobody serves."""
    folder = tmp_path_factory.mktemp("metrics")
    srv = RedisServer(folder / "redis")
    worker = None
    try:  # from here: a module's server outlives the run if anything fails before its finally
        s = replace(settings(), redis_url=srv.url, rate_limit=(0, 0))
        producer = Producer(s)
        broken = producer.submit_image("a door", model="t2i", init_image=Image.new("RGB", (256, 256), (90, 20, 20)),
                                       strength=0.5, steps=4, seed=1)
        producer.store.delete_job(broken)
        good = producer.submit_image("a castle", model="t2i", steps=4, seed=3)
        worker = Worker("m1", srv.url, [tiny_t2i], folder, env={"ZOOMQ_LOG_FORMAT": "json"})
        assert producer.wait(broken, timeout=120)["state"] == "failed"
        assert producer.wait(good, timeout=120)["state"] == "done"
        waiting = producer.submit_image("a tower", model="nobody-serves-it", steps=4)
        yield Ran(create_app(s).test_client(), producer, good, broken, waiting, folder / "worker-m1.log", worker.name)
    finally:
        if worker is not None:
            worker.stop()
        srv.stop()


def test_metrics_report_what_the_cluster_did(ran):
    m = scrape(ran.client)
    assert m["zoomq_redis_up"] == {(): 1.0}
    assert by(m, "zoomq_jobs_submitted_total", "kind") == {"image": 3, "zoom": 0}
    assert m["zoomq_jobs_ended_total"] == {
        (("kind", kind), ("state", state)): (1 if kind == "image" and state in ("done", "failed") else 0)
        for kind in ("image", "zoom") for state in ("done", "failed", "cancelled")}
    assert by(m, "zoomq_jobs", "state") == {"queued": 1, "running": 0}
    assert by(m, "zoomq_queue_length", "queue") == {"encode": 0, "render.t2i": 0, "render.nobody-serves-it": 1}
    assert m["zoomq_workers_online"] == {(): 1.0}
    assert by(m, "zoomq_workers", "model") == {"t2i": 1}
    # One image piece completed (the failed one is not timed): one observation, in one bucket.
    assert by(m, "zoomq_piece_duration_seconds_count", "piece") == {"image": 1, "keyframe": 0, "segment": 0,
                                                                    "stitch": 0}
    seconds = by(m, "zoomq_piece_duration_seconds_sum", "piece")["image"]
    assert 0 < seconds < 120
    buckets = {dict(k)["le"]: v for k, v in m["zoomq_piece_duration_seconds_bucket"].items()
               if dict(k)["piece"] == "image"}
    assert buckets["+Inf"] == 1 and all(v == (1 if float(le) >= seconds else 0) for le, v in buckets.items())
    assert by(m, "zoomq_piece_failures_total", "piece") == {"image": 1, "keyframe": 0, "segment": 0, "stitch": 0}
    assert set(by(m, "zoomq_pieces_resent_total", "piece").values()) == {0}
    assert ran.client.get("/api/metrics").status_code == 404  # one address, the one Prometheus expects


def test_worker_logs_each_piece_as_json(ran):
    records = [json.loads(line) for line in ran.log.read_text().splitlines() if line.strip()]  # all of them
    assert {"celery.apps.worker", "zoomq.worker.pieces"} <= {r["logger"] for r in records}  # Celery's own too
    events = [(r["event"], r["job"], r.get("outcome")) for r in records if r.get("event", "").startswith("piece")]
    assert events == [("piece started", ran.broken, None), ("piece ended", ran.broken, "failed"),
                      ("piece started", ran.good, None), ("piece ended", ran.good, "done")]
    ended = next(r for r in records if r.get("event") == "piece ended" and r["job"] == ran.good)
    assert ended["piece"] == "image" and ended["worker"] == ran.worker and ended["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ended["time"])
    # The log and the histogram time the same piece.
    histogram = by(scrape(ran.client), "zoomq_piece_duration_seconds_sum", "piece")["image"]
    assert ended["seconds"] == pytest.approx(histogram, abs=0.0006)


def test_counters_follow_job_states_and_the_watchdog(tmp_path, redis_server):
    srv = redis_server(tmp_path / "redis")
    try:
        client = create_app(replace(settings(), redis_url=srv.url)).test_client()
        r = srv.client()
        jobs = Jobs(r, 600)
        jobs.create("image-1", "image", "t2i", {}, 4)
        jobs.create("zoom-1", "zoom", "inpaint", {}, 10)
        jobs.start_piece("zoom-1", "keyframe:0", "lost@node", 1)
        assert jobs.cancel("image-1") and not jobs.cancel("image-1")  # ended once, counted once
        # The zoom's worker vanished mid-keyframe: its piece is listed as running, without a lease.
        entry = {"task": TASK_KEYFRAME, "args": ["zoom-1", 0], "queue": render_queue("inpaint"), "worker": "lost@node"}
        r.hset(lease.RUNNING_PIECES, lease.running_field("zoom-1", "keyframe:0"), json.dumps(entry))
        sent = []
        assert watchdog.scan(r, jobs, lambda *task: sent.append(task), 8, "me", 2) == ["zoom-1|keyframe:0"]
        assert sent == [(TASK_KEYFRAME, ["zoom-1", 0], "render.inpaint")]

        m = scrape(client)
        assert by(m, "zoomq_jobs_submitted_total", "kind") == {"image": 1, "zoom": 1}
        assert m["zoomq_jobs_ended_total"][(("kind", "image"), ("state", "cancelled"))] == 1
        assert sum(m["zoomq_jobs_ended_total"].values()) == 1
        assert by(m, "zoomq_jobs", "state") == {"queued": 0, "running": 1}
        assert by(m, "zoomq_pieces_resent_total", "piece") == {"image": 0, "keyframe": 1, "segment": 0, "stitch": 0}
        assert m["zoomq_workers_online"] == {(): 0.0} and "zoomq_workers" not in m  # no worker, no model

        jobs.finish("zoom-1")
        m = scrape(client)
        assert by(m, "zoomq_jobs", "state") == {"queued": 0, "running": 0}
        assert m["zoomq_jobs_ended_total"][(("kind", "zoom"), ("state", "done"))] == 1
    finally:
        srv.stop()


def test_histogram_buckets_are_cumulative(tmp_path, redis_server):
    srv = redis_server(tmp_path / "redis")
    try:
        r = srv.client()
        for seconds in (0.2, 0.7, 3.0, 3.0, 4000.0):
            stats.observe_piece(r, "keyframe:4", seconds)
        keyframe = stats.read_durations(r.hgetall(stats.DURATIONS))["keyframe"]
        assert keyframe.count == 5 and keyframe.total == pytest.approx(4006.9)
        cumulative = dict(keyframe.buckets)
        assert (cumulative["0.5"], cumulative["1.0"], cumulative["2.5"], cumulative["5.0"]) == (1, 2, 2, 4)
        assert cumulative["2500.0"] == 4 and cumulative["+Inf"] == 5
    finally:
        srv.stop()


def test_metrics_answer_when_redis_is_down(tmp_path, redis_server):
    srv = redis_server(tmp_path / "redis")
    client = create_app(replace(settings(), redis_url=srv.url)).test_client()
    assert scrape(client)["zoomq_redis_up"] == {(): 1.0}
    srv.stop()
    m = scrape(client)
    assert m == {"zoomq_redis_up": {(): 0.0}}
    never = create_app(replace(settings(), redis_url=f"redis://127.0.0.1:{free_port()}/0")).test_client()
    assert scrape(never) == {"zoomq_redis_up": {(): 0.0}}


def test_text_and_json_log_lines():
    logger = logging.getLogger("zoomq.test-logs")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    out = {}
    for fmt in ("text", "json"):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.formatter(fmt))
        logger.addHandler(handler)
        try:
            logs.event(logger, "piece ended", job="j-1", piece="keyframe:2", worker="w1@node", seconds=1.5,
                       outcome="cancelled")
            logger.warning("plain %s", "words")
        finally:
            logger.removeHandler(handler)
        out[fmt] = stream.getvalue().splitlines()
    assert out["text"] == [
        "zoomq: piece ended: job=j-1 piece=keyframe:2 worker=w1@node seconds=1.5 outcome=cancelled",
        "zoomq: plain words"]
    event, plain = map(json.loads, out["json"])
    assert {k: event[k] for k in ("event", "job", "piece", "worker", "seconds", "outcome", "level")} == {
        "event": "piece ended", "job": "j-1", "piece": "keyframe:2", "worker": "w1@node", "seconds": 1.5,
        "outcome": "cancelled", "level": "info"}
    assert plain["message"] == "plain words" and plain["level"] == "warning" and "event" not in plain


def test_log_format_is_checked(monkeypatch):
    monkeypatch.setenv("ZOOMQ_LOG_FORMAT", "JSON")
    assert settings().log_format == "json"
    monkeypatch.setenv("ZOOMQ_LOG_FORMAT", "xml")
    with pytest.raises(InvalidParameter) as e:
        settings()
    assert e.value.param == "ZOOMQ_LOG_FORMAT" and e.value.value == "xml" and "text or json" in str(e.value)
    assert logs.current_format() == "text"  # logging still works, so the refusal can be read
    monkeypatch.delenv("ZOOMQ_LOG_FORMAT")
    assert settings().log_format == "text"
