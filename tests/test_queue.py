"""The distributed system end to end: a private redis-server, real worker processes, the
miniature models — jobs, pipelined zooms, and the failures real clusters have."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from support.cli import run_cli
from support.cluster import Worker, wait_for
from zoomq.errors import LeaseLost
from zoomq.producer import Producer
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest
from zoomq.zoom import video
from zoomq.zoom.compose import render_zoom
from zoomq.zoom.settings import ZoomSettings

SMALL_ZOOM: dict[str, Any] = dict(size=128, mask_width=32, interpolation_frames=6, steps=3, seed=21)
SLOW_ZOOM: dict[str, Any] = dict(size=512, mask_width=128, interpolation_frames=4, steps=30, seed=8)  # ~6 s a keyframe


def decoded(data: bytes, folder) -> list[np.ndarray]:
    path = folder / f"video-{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    return list(video.read_frames(path))


def frame_differences(frames: list[np.ndarray], reference: list[np.ndarray]) -> list[str]:
    """Each frame that differs from its reference: index, largest difference, share of values changed
    (a failure then says whether one piece or the whole video moved, and by how much)."""
    found = []
    for i, (a, b) in enumerate(zip(frames, reference, strict=True)):
        if not np.array_equal(a, b):
            diff = np.abs(a.astype(int) - b.astype(int))
            found.append(f"frame {i}: max {diff.max()}, {np.mean(diff > 0):.1%} of values")
    return found


def record_of(producer: Producer, job: str) -> dict:
    """``job``'s record, which the test expects to exist."""
    record = producer.jobs.get(job)
    assert record is not None, f"no record of job {job}"
    return record


def reference_zoom(tiny_inpaint, folder, **options) -> list[np.ndarray]:
    """The same zoom rendered in this process, uninterrupted, with the workers' thread count
    (OpenVINO's sums run in another order with other thread counts, which moves pixels)."""
    from zoomq.config import settings

    threads_one = settings().__class__(**{**vars(settings()), "threads": 1})
    result = render_zoom(Renderer(tiny_inpaint, threads_one), ZoomSettings("a spiral", **options),
                         folder / "reference.mp4")
    return list(video.read_frames(result.video))


def test_image_job_end_to_end(cluster, tiny_t2i, monkeypatch):
    monkeypatch.setenv("ZOOMQ_JOB_TTL", "600")
    cluster("w1")
    producer = Producer()
    job = producer.submit_image("a castle", model="t2i", steps=4, seed=3, negative_prompt="fog")
    record = producer.wait(job, timeout=120)
    assert record["state"] == "done", record.get("error")
    assert record["progress"] == 1.0 and record["worker"].startswith("w1@")
    assert 0 < producer.redis.ttl(f"zoomq:job:{job}") <= 600  # ended records expire
    queued = Image.open(io.BytesIO(producer.result(job))).convert("RGB")
    local = Renderer(tiny_t2i).render(RenderRequest("a castle", steps=4, seed=3, negative_prompt="fog")).image
    assert np.array_equal(np.asarray(queued), np.asarray(local))


def test_zoom_job_over_two_workers(cluster, tiny_inpaint, tmp_path):
    cluster("w1")
    cluster("w2")
    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=6, gif=True, **SMALL_ZOOM)
    record = producer.wait(job, timeout=300)
    assert record["state"] == "done", record.get("error")
    assert record["keyframes_done"] == 6 and record["progress"] == 1.0
    pieces = producer.jobs.pieces(job)
    assert set(pieces) == {f"keyframe:{k}" for k in range(6)} | {f"segment:{k}" for k in range(5)} | {"stitch"}
    assert len({p["worker"] for p in pieces.values()}) == 2, pieces  # both workers did work
    frames = decoded(producer.result(job), tmp_path)
    reference = reference_zoom(tiny_inpaint, tmp_path, keyframes=6, **SMALL_ZOOM)
    assert len(frames) == len(reference) == 5 * 6 + 1
    assert not frame_differences(frames, reference), frame_differences(frames, reference)
    gif, sidecar = producer.artifact(job, "result.gif"), producer.artifact(job, "sidecar.json")
    assert gif is not None and gif[:6] == b"GIF89a"
    assert sidecar is not None and b'"frames": 31' in sidecar
    # The workers measured the rates a dry run estimates from: the next such zoom has a time.
    estimate = producer.estimate_zoom("a spiral", model="inpaint", keyframes=6, **SMALL_ZOOM)
    took = record["finished"] - record["started"]
    assert estimate["expected_seconds"] is not None and 0 < estimate["expected_seconds"] < 5 * took, (estimate, took)


def _running_piece(producer, job, prefix, min_units):
    """Wait until a piece named ``prefix…`` is past ``min_units`` of work; returns the record."""
    def check():
        record = producer.jobs.get(job)
        work = {k.decode(): int(v) for k, v in producer.redis.hgetall(f"zoomq:job:{job}:work").items()}
        piece = record.get("piece", "")
        return record if piece.startswith(prefix) and work.get(piece, 0) >= min_units else None
    return wait_for(check, 180, f"{prefix} to be under way")


def test_worker_killed_mid_keyframe_resumes_with_identical_video(cluster, tiny_inpaint, tmp_path):
    cluster("w1")
    cluster("w2")
    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=2, **SLOW_ZOOM)
    record = _running_piece(producer, job, "keyframe:1", 5)
    os.kill(int(record["worker_pid"]), signal.SIGKILL)  # the process rendering keyframe 1
    record = producer.wait(job, timeout=600)
    assert record["state"] == "done", record.get("error")
    starts = {piece: p["starts"] for piece, p in producer.jobs.pieces(job).items()}
    assert starts["keyframe:0"] == 1  # resumed from the last finished keyframe
    assert starts["keyframe:1"] >= 2
    frames = decoded(producer.result(job), tmp_path)
    reference = reference_zoom(tiny_inpaint, tmp_path, keyframes=2, **SLOW_ZOOM)
    assert len(frames) == len(reference) == 4 + 1  # no segment twice
    assert not frame_differences(frames, reference), (frame_differences(frames, reference), producer.jobs.pieces(job))


@pytest.mark.slow
def test_lost_node_is_replaced_within_two_minutes(cluster, tmp_path):
    """With the default stale time: the lost node's keyframe starts elsewhere well within 2 min."""
    default = {"ZOOMQ_STALE_AFTER": "45", "ZOOMQ_HEARTBEAT": "5"}
    first = cluster("first", env=default)
    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=2, **SLOW_ZOOM)
    record = _running_piece(producer, job, "keyframe:1", 3)
    assert record["worker"] == first.name
    cluster("second", env=default)  # idle until the first node is gone
    first.kill_node()
    lost = time.monotonic()
    wait_for(lambda: record_of(producer, job)["worker"].startswith("second@"), 120, "another worker to take over")
    took = time.monotonic() - lost
    status = producer.status(job)
    assert status["worker_alive"] is True
    record = producer.wait(job, timeout=300)
    assert record["state"] == "done", record.get("error")
    print(f"lost node's keyframe restarted on another worker after {took:.0f} s")
    assert took < 120


def test_liveness_shows_in_status(cluster, capsys):
    worker = cluster("w1", env={"ZOOMQ_HEARTBEAT": "1"})
    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=3, **SLOW_ZOOM)
    _running_piece(producer, job, "keyframe:0", 2)
    record = producer.status(job)
    assert record["stage"].startswith("keyframe 1/3 (") and record["eta_seconds"] > 0
    assert record["queue_position"] is None and 0 < record["progress"] < 1
    code, out, _ = run_cli("status", job, capsys=capsys)
    assert code == 0 and "(alive;" in out and "running" in out
    worker.kill_node()
    wait_for(lambda: producer.status(job)["worker_alive"] is False, 15, "the worker to be seen lost")
    code, out, _ = run_cli("status", job, capsys=capsys)
    assert "NOT SEEN" in out


def test_cancel_stops_within_one_step_and_frees_the_worker(cluster):
    cluster("w1")
    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=3, **SLOW_ZOOM)
    _running_piece(producer, job, "keyframe:0", 3)
    per_step = float(record_of(producer, job)["seconds_per_step"])
    assert producer.cancel(job)
    cancelled = time.monotonic()
    # the piece lets go of its lease once it has stopped
    wait_for(lambda: not producer.redis.exists(f"zoomq:lease:{job}:keyframe:0"), 30, "the keyframe to stop")
    stopped = time.monotonic() - cancelled
    assert stopped < per_step + 2.0, (stopped, per_step)
    assert producer.status(job)["state"] == "cancelled"
    assert not producer.cancel(job)
    follow = producer.submit_image("next", model="t2i", steps=2, seed=1)
    assert producer.wait(follow, timeout=60)["state"] == "done"


def test_failing_task_marks_the_job_failed(server, cluster, tiny_t2i):
    producer = Producer()
    job = producer.submit_image("x", model="t2i", steps=2, seed=1, init_image=Image.new("RGB", (64, 64)))
    producer.redis.delete(f"zoomq:artifact:{job}/init.png")  # gone before any worker looks
    cluster("w1")
    record = producer.wait(job, timeout=60)
    assert record["state"] == "failed" and "no longer in the artifact store" in record["error"]


def test_a_model_nobody_serves_is_reported(cluster, capsys):
    cluster("w1")
    producer = Producer()
    job = producer.submit_image("x", model="ghost", steps=2, seed=1)
    status = producer.status(job)
    assert status["state"] == "queued" and "no worker online serves model 'ghost'" in status["warning"]
    assert status["queue_position"] == 1


def test_invalid_parameters_are_refused_before_enqueueing(cluster, capsys):
    cluster("w1")
    producer = Producer()
    from zoomq.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as e:
        producer.submit_image("x", model="t2i", steps=0)
    assert e.value.param == "steps"
    # a text-to-image model zooms too (latent blending), with its defaults filled in: not refused
    assert producer.check_zoom("x", model="t2i")[0].steps == 20
    with pytest.raises(InvalidParameter) as e:
        producer.submit_zoom("x", model="inpaint", mask_width=300)
    assert e.value.param == "mask_width"
    assert producer.redis.zcard("zoomq:jobs") == 0  # nothing was enqueued
    code, _, err = run_cli("submit", "image", "x", "--model", "t2i", "--steps", "0", capsys=capsys)
    assert code == 2 and err.startswith("zoomq: error: --steps:")


def test_broker_unreachable_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("ZOOMQ_REDIS_URL", "redis://127.0.0.1:1/0")
    code, _, err = run_cli("submit", "image", "x", "--model", "t2i", capsys=capsys)
    assert code == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in err and len(err.strip().splitlines()) == 1


def test_redis_restart_with_aof_loses_no_job(tmp_path, monkeypatch, tiny_t2i, tiny_inpaint, redis_server):
    server = redis_server(tmp_path / "aof", appendonly=True)
    monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
    workers = []
    try:
        producer = Producer()
        waiting = [producer.submit_image("x", model="t2i", steps=2, seed=i) for i in range(3)]
        server.restart()  # the jobs wait in the queue through the restart
        workers.append(Worker("w1", server.url, [tiny_t2i, tiny_inpaint], tmp_path))
        for job in waiting:
            assert Producer().wait(job, timeout=120)["state"] == "done"
        server.restart()  # and the worker rides through one too
        later = Producer().submit_image("y", model="t2i", steps=2, seed=9)
        assert Producer().wait(later, timeout=120)["state"] == "done"
    finally:
        for w in workers:
            w.stop()
        server.stop()


def test_fifty_jobs_from_ten_producers_none_lost_none_twice(cluster):
    cluster("w1")
    cluster("w2")
    ids: list[str] = []
    lock = threading.Lock()

    def produce(n: int) -> None:
        producer = Producer()
        for i in range(5):
            job = producer.submit_image(f"job {n}.{i}", model="t2i", steps=1, seed=n * 10 + i, width=64, height=64)
            with lock:
                ids.append(job)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(set(ids)) == 50
    producer = Producer()
    records = [producer.wait(job, timeout=300, poll=0.2) for job in ids]
    assert [r["state"] for r in records] == ["done"] * 50
    assert all(producer.jobs.pieces(job)["image"]["starts"] == 1 for job in ids)
    assert producer.redis.zcard("zoomq:queued") == 0


def test_plain_celery_command_serves_jobs(server, tmp_path, tiny_t2i):
    """``celery -A zoomq.worker.tasks worker`` is the same worker as ``zoomq worker``."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "ZOOMQ_REDIS_URL": server.url, "ZOOMQ_MODELS": str(tiny_t2i), "ZOOMQ_THREADS": "1"}
    log = open(tmp_path / "celery.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "celery"), "-A", "zoomq.worker.tasks", "worker", "-Q", "render.t2i,encode",
         "--concurrency", "1", "--loglevel", "INFO"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        producer = Producer()
        wait_for(lambda: producer.workers(), 120, "the celery worker to announce itself")
        assert "t2i" in producer.models()
        job = producer.submit_image("x", model="t2i", steps=2, seed=1)
        assert producer.wait(job, timeout=120)["state"] == "done"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_duplicate_deliveries_do_no_work_twice(cluster, tmp_path):
    """Tasks delivered again (as Redis does after a visibility timeout) find their result or the
    piece's lease and end; every piece still runs exactly once."""
    from zoomq.queue.celery_app import TASK_KEYFRAME, TASK_SEGMENT

    cluster("w1")
    cluster("w2")
    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=3, **SLOW_ZOOM)
    _running_piece(producer, job, "keyframe:1", 3)
    for task, args, queue in ((TASK_KEYFRAME, [job, 0], "render.inpaint"), (TASK_KEYFRAME, [job, 1], "render.inpaint"),
                              (TASK_SEGMENT, [job, 0], "encode")):
        producer._send(task, args, queue)
    record = producer.wait(job, timeout=300)
    assert record["state"] == "done", record.get("error")
    assert {piece: p["starts"] for piece, p in producer.jobs.pieces(job).items()} == {
        "keyframe:0": 1, "keyframe:1": 1, "keyframe:2": 1, "segment:0": 1, "segment:1": 1, "stitch": 1}


def test_redis_restart_during_a_keyframe_is_survived(tmp_path, monkeypatch, tiny_t2i, tiny_inpaint, redis_server):
    """The broker goes away mid-render and comes back: the piece's Redis calls are retried (by
    redis-py, and past that by the task's own backoff) and the job completes; AOF kept the queue,
    the lease and the records."""
    server = redis_server(tmp_path / "aof", appendonly=True)
    monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
    worker = Worker("w1", server.url, [tiny_t2i, tiny_inpaint], tmp_path)
    try:
        producer = Producer()
        job = producer.submit_zoom("a spiral", model="inpaint", keyframes=2, **SLOW_ZOOM)
        _running_piece(producer, job, "keyframe:0", 3)
        server.restart()
        record = Producer().wait(job, timeout=300)
        assert record["state"] == "done", record.get("error")
        assert Producer().result(job)[4:8] == b"ftyp"
    finally:
        worker.stop()
        server.stop()


def test_a_zoom_encodes_each_prompt_once_across_workers(server, tiny_inpaint, monkeypatch):
    """Keyframes of one job rendered by two workers: the prompt and the negative prompt go through
    the text encoder once for the whole job; the second worker loads the first one's embeddings."""
    import redis

    from zoomq.config import settings
    from zoomq.queue import registry
    from zoomq.queue.job_records import Jobs
    from zoomq.storage import open_store
    from zoomq.worker import pieces

    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=3, negative_prompt="fog", **SMALL_ZOOM)
    calls: list[tuple[str, str]] = []

    def context(name):
        s = settings()
        client = redis.Redis.from_url(s.redis_url)
        ctx = pieces.Context(settings=s, redis=client, jobs=Jobs(client, s.job_ttl), store=open_store(s, client),
                             worker=name, models=registry.describe_models([tiny_inpaint]),
                             send=lambda *task: None)
        renderer = ctx.renderer("inpaint")
        run = renderer.parts.run

        def recorded(part, **inputs):
            calls.append((name, part))
            return run(part, **inputs)

        monkeypatch.setattr(renderer.parts, "run", recorded)
        return ctx

    first, second = context("w1"), context("w2")
    for ctx, k in ((first, 0), (second, 1), (first, 2)):
        pieces.run_keyframe(ctx, job, k)
    encodes = [call for call in calls if call[1] == "text_encoder"]
    assert encodes == [("w1", "text_encoder")] * 2, encodes
    assert {name for name, part in calls if part == "unet"} == {"w1", "w2"}  # both really rendered
    assert all(producer.store.exists(pieces.keyframe_key(job, k)) for k in range(3))


def test_a_done_piece_whose_lease_lapsed_leaves_no_running_entry(server):
    """Found by the fleet soak: a piece that finished after its lease lapsed (a heartbeat late on a
    loaded node) left its running entry, which the watchdog then sent again every stale period
    until the job ended. Done, it removes it; not done, the entry stays for the watchdog."""
    from zoomq.worker.lease import RUNNING_PIECES, Lease

    client = server.client()
    lease = Lease.claim(client, "job", "image", "me", ttl=60, entry={"task": "zoomq.image"})
    client.delete(lease.key)  # lapsed, and nobody took it
    assert not lease.release() and client.hexists(RUNNING_PIECES, "job|image")
    assert lease.release(done=True) and not client.hexists(RUNNING_PIECES, "job|image")
    other = Lease.claim(client, "job", "image", "other", ttl=60, entry={"task": "zoomq.image"})
    assert not lease.release(done=True)  # taken by another: its lease and entry stay
    assert other.held() and client.hexists(RUNNING_PIECES, "job|image")


def test_the_watchdog_never_writes_back_an_entry_that_moved_on(server):
    """Found by the fleet soak: the watchdog read a running entry, the piece then ended and removed
    it, and the watchdog wrote its stale copy back, to be sent again every stale period."""
    from zoomq.worker.lease import RUNNING_PIECES, lease_key
    from zoomq.worker.watchdog import mark_resent

    client = server.client()
    client.hset(RUNNING_PIECES, "job|image", b'{"a": 1}')
    client.hdel(RUNNING_PIECES, "job|image")  # ended after the watchdog read it
    assert not mark_resent(client, "job|image", b'{"a": 1}', {"a": 1, "resent": 1}, lease_key("job", "image"))
    assert not client.hexists(RUNNING_PIECES, "job|image")
    client.hset(RUNNING_PIECES, "job|image", b'{"a": 1}')
    client.set(lease_key("job", "image"), "another")  # taken up meanwhile
    assert not mark_resent(client, "job|image", b'{"a": 1}', {"a": 1, "resent": 1}, lease_key("job", "image"))
    client.delete(lease_key("job", "image"))
    assert mark_resent(client, "job|image", b'{"a": 1}', {"a": 1, "resent": 1}, lease_key("job", "image"))
    assert client.hget(RUNNING_PIECES, "job|image") == b'{"a": 1, "resent": 1}'


def test_a_worker_that_lost_its_lease_writes_nothing(server, tiny_inpaint, monkeypatch):
    """Cut off long enough for the watchdog to hand its keyframe to another worker, a worker that
    finishes anyway must not write its result, nor send the pieces after it, nor free the new
    holder's lease or running entry."""
    import redis

    from zoomq.config import settings
    from zoomq.queue import registry
    from zoomq.queue.job_records import Jobs
    from zoomq.storage import open_store
    from zoomq.worker import lease, pieces

    producer = Producer()
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=2, **SMALL_ZOOM)
    s = settings()
    client = redis.Redis.from_url(s.redis_url)
    sent = []
    ctx = pieces.Context(settings=s, redis=client, jobs=Jobs(client, s.job_ttl), store=open_store(s, client),
                         worker="late@node", models=registry.describe_models([tiny_inpaint]),
                         send=lambda *task: sent.append(task))
    renderer = ctx.renderer("inpaint")
    run, calls = renderer.parts.run, []
    key, field = lease.lease_key(job, "keyframe:0"), lease.running_field(job, "keyframe:0")

    def taken_over_midway(part, **inputs):
        calls.append(part)
        if calls.count("unet") == 2:  # the watchdog gave the piece to another worker meanwhile
            client.set(key, "other@node:1:1")
            client.hset(lease.RUNNING_PIECES, field, '{"worker": "other@node"}')
        return run(part, **inputs)

    monkeypatch.setattr(renderer.parts, "run", taken_over_midway)
    with pytest.raises(LeaseLost):
        pieces.run_keyframe(ctx, job, 0)
    assert calls[-1] == "vae_decoder"  # it rendered to the end, then checked its lease
    assert not producer.store.exists(pieces.keyframe_key(job, 0))
    assert sent == []
    assert client.get(key) == b"other@node:1:1" and client.hexists(lease.RUNNING_PIECES, field)


def test_an_ended_job_record_is_final(server):
    """Progress, heartbeats and timings that arrive after a job ended (a late worker) change
    nothing, and never bring back an expired record."""
    producer = Producer()
    jobs = producer.jobs
    job = producer.submit_image("x", model="t2i", steps=2, seed=1)
    jobs.start_piece(job, "image", "w@node", 1)
    jobs.progress(job, "image", 1, stage="denoising (1/2)")
    assert record_of(producer, job)["stage"] == "denoising (1/2)" and record_of(producer, job)["work_done"] == 1
    jobs.finish(job, result=f"{job}/result.png")
    before = producer.redis.hgetall(f"zoomq:job:{job}")
    assert not jobs.update(job, stage="denoising (2/2)", worker="late@node")
    jobs.progress(job, "image", 2, stage="denoising (2/2)")
    jobs.measure(job, "step", 9.0)
    assert producer.redis.hgetall(f"zoomq:job:{job}") == before
    producer.redis.delete(f"zoomq:job:{job}")
    jobs.progress(job, "image", 2, stage="late")
    assert not producer.redis.exists(f"zoomq:job:{job}")
