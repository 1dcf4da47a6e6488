"""``zoomq bench queue --control-plane``: what the control plane costs as the queue grows.

A private redis-server and the web app under a threaded WSGI server on loopback, one worker
announced that renders nothing (as in issue 26's measurement); jobs are filled straight into Redis
(``Jobs.add_create``) to each count. At each count: the time of each status path over HTTP (median
and p95), submits per second from concurrent HTTP clients, and the Redis commands each costs (from
``INFO commandstats``); then the Redis memory a queued and a finished job hold (``MEMORY USAGE``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import redis

from zoomq.node.bench_report import machine, write_section
from zoomq.node.processes import RedisServer
from zoomq.queue.connection import text

MODEL = "bench"
SUBMITTER = "addr:127.0.0.1"  # the clients' address: the fill counts against the same submitter's cap
BODY = {"kind": "image", "prompt": "a lighthouse", "model": MODEL, "steps": 2}
PATHS = {"health": "/api/health", "metrics": "/metrics", "overview": "/jobs", "list": "/api/jobs?limit=50"}
#: What the announced worker says it serves: a text-to-image model, as a prepared one's manifest says.
SERVED = {"task": "text-to-image", "native_size": 512, "latent_factor": 8, "decoders": ["full"],
          "cache_branches": [], "defaults": None}


def run(out: Path, counts: tuple[int, ...] = (200, 20_000), clients: int = 8, submits: int = 400,
        samples: int = 50, say: Callable[[str], None] = print) -> dict[str, float]:
    """Measure at each of ``counts`` queued jobs, write the ``queue-control-plane`` section of ``out``;
    returns the figures."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    from zoomq.config import settings
    from zoomq.queue import registry
    from zoomq.web import create_app

    with tempfile.TemporaryDirectory(prefix="zoomq-bench-") as folder:
        server = RedisServer(Path(folder) / "redis")
        try:
            s = replace(settings(), redis_url=server.url, rate_limit=(0, 0), key_attempts=(0, 0), api_token="",
                        api_keys_file="", max_queued=0, max_queued_per_key=10**9)
            app = create_app(s)
            jobs = app.extensions["zoomq"].producer.jobs
            r = server.client()
            registry.announce(r, "bench@nowhere", {"models": {MODEL: SERVED}, "queues": []}, heartbeat=3600)
            quiet = type("Quiet", (WSGIRequestHandler,), {"log_request": lambda *_: None})
            http = make_server("127.0.0.1", 0, app, threaded=True, request_handler=quiet)
            threading.Thread(target=http.serve_forever, name="bench web", daemon=True).start()
            base = f"http://127.0.0.1:{http.server_port}"
            try:
                figures: dict[str, float] = {}
                for count in counts:
                    _fill(jobs, count - jobs.queued())
                    say(f"{jobs.queued()} jobs queued: status paths, then {submits} submits from {clients} clients")
                    figures.update(_at(r, base, count, clients, submits, samples))
                figures.update(_memory(r, jobs))
            finally:
                http.shutdown()
        finally:
            server.stop()
    _write(out, figures, counts, clients, submits, samples)
    return figures


def _fill(jobs, count: int, batch: int = 1000) -> None:
    """``count`` more queued image jobs of ``SUBMITTER``, straight into Redis."""
    for start in range(0, max(0, count), batch):
        with jobs.r.pipeline() as p:
            for _ in range(min(batch, count - start)):
                jobs.add_create(p, str(uuid.uuid4()), "image", MODEL, {"prompt": "filler", "steps": 2}, 2,
                                submitter=SUBMITTER)
            p.execute()


def _commands(r: redis.Redis) -> int:
    """Commands the server has run so far, its own INFO calls left out."""
    stats = r.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as answer:
        answer.read()


def _post(url: str) -> str:
    request = urllib.request.Request(url, data=json.dumps(BODY).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())["id"]


def _at(r: redis.Redis, base: str, count: int, clients: int, submits: int, samples: int) -> dict[str, float]:
    """The figures at ``count`` queued jobs: each path's median and p95 in ms and commands per
    request, then submits per second from ``clients`` threads and commands per submit."""
    figures = {}
    job_id = _post(base + "/api/jobs")  # a queued job, its status read below
    paths = {**PATHS, "status": f"/api/jobs/{job_id}"}
    for name, path in paths.items():
        for _ in range(2):  # connections opened, templates compiled
            _get(base + path)
        before = _commands(r)
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            _get(base + path)
            times.append(time.perf_counter() - start)
        figures[f"{name}_{count}_median_ms"] = statistics.median(times) * 1000
        figures[f"{name}_{count}_p95_ms"] = statistics.quantiles(times, n=20)[18] * 1000 if samples > 1 else times[0]
        figures[f"{name}_{count}_commands"] = (_commands(r) - before) / samples
    before = _commands(r)
    each = [submits // clients + (i < submits % clients) for i in range(clients)]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for _ in range(n):
                _post(base + "/api/jobs")
        except BaseException as e:  # reported after the run, never lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(n,)) for n in each]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    figures[f"submit_{count}_per_s"] = submits / elapsed
    figures[f"submit_{count}_commands"] = (_commands(r) - before) / submits
    return figures


def _usage(r: redis.Redis, key: str) -> int:
    return int(r.memory_usage(key, samples=0) or 0)


def _share(r: redis.Redis, key: str) -> float:
    """Bytes per entry of an index or a list: its MEMORY USAGE over its length."""
    lengths: dict[str, Callable[[str], int]] = {"zset": r.zcard, "hash": r.hlen, "list": r.llen, "set": r.scard}
    measure = lengths.get(text(r.type(key)))
    length = measure(key) if measure else 0
    return _usage(r, key) / length if length else 0.0


def _memory(r: redis.Redis, jobs) -> dict[str, float]:
    """Bytes a job submitted over HTTP holds while queued, and after it ended: its record, its
    entry in each index, its lane entry and broker message (each structure's size over its length)."""
    from zoomq.queue import fair
    from zoomq.queue.celery_app import render_queue

    job_id = text(r.zrevrange(jobs.ALL_SET, 0, 0)[0])
    record = f"zoomq:job:{job_id}"
    indexes = (jobs.QUEUED_SET, jobs.ALL_SET, jobs.unfinished_set(SUBMITTER), jobs.WHO)
    queued = {
        "record": _usage(r, record),
        "indexes": sum(_share(r, k) for k in indexes),
        "lane": _share(r, fair.lane_key(MODEL, SUBMITTER)),
        "message": _share(r, render_queue(MODEL)),
    }
    jobs.finish(job_id, result=f"{job_id}/result.png", result_type="image/png")
    ended = {"record": _usage(r, record),
             "indexes": sum(_share(r, k) for k in (jobs.ALL_SET, jobs.EXPIRY_SET, jobs.WHO))}
    figures = {f"queued_job_{k}_bytes": v for k, v in queued.items()}
    figures.update({f"ended_job_{k}_bytes": v for k, v in ended.items()})
    figures["queued_job_bytes"] = sum(queued.values())
    figures["ended_job_bytes"] = sum(ended.values())
    return figures


def _write(out: Path, f: dict[str, float], counts: tuple[int, ...], clients: int, submits: int,
           samples: int) -> None:
    head = " | ".join(f"{c:,} queued" for c in counts)
    rows = []
    for name in (*PATHS, "status"):
        cells = " | ".join(f"{f[f'{name}_{c}_median_ms']:.1f} / {f[f'{name}_{c}_p95_ms']:.1f} ms, "
                           f"{f[f'{name}_{c}_commands']:.0f} cmds" for c in counts)
        rows.append(f"| {name} (median / p95, Redis commands) | {cells} |")
    cells = " | ".join(f"{f[f'submit_{c}_per_s']:.0f} jobs/s, {f[f'submit_{c}_commands']:.0f} cmds" for c in counts)
    rows.append(f"| submit over HTTP, {clients} clients ({submits} jobs) | {cells} |")
    table = "\n".join(rows)
    body = f"""## Control plane (`zoomq bench queue --control-plane`)

Measured {date.today().isoformat()} on {machine()}: a private redis-server, the web app under a
threaded WSGI server on loopback, one worker announced that renders nothing; jobs filled straight
into Redis to each count, all of one submitter (the clients' address), so its cap index is as
large as the queue. {samples} requests a path, one at a time; commands counted in Redis'
`INFO commandstats`. Rerun with `zoomq bench queue --control-plane` (`--jobs 200,20000` and
`--clients 8` are the defaults).

| what | {head} |
|---|{'---|' * len(counts)}
{table}

Redis memory per job (`MEMORY USAGE`; an index's or list's share is its size over its length):

| job | record | index entries | lane entry | broker message | total |
|---|---|---|---|---|---|
| queued | {f['queued_job_record_bytes']:.0f} B | {f['queued_job_indexes_bytes']:.0f} B | \
{f['queued_job_lane_bytes']:.0f} B | {f['queued_job_message_bytes']:.0f} B | {f['queued_job_bytes']:.0f} B |
| ended (until `ZOOMQ_JOB_TTL`) | {f['ended_job_record_bytes']:.0f} B | {f['ended_job_indexes_bytes']:.0f} B | \
– | – | {f['ended_job_bytes']:.0f} B |

Reading the figures:
- Every path sends Redis the same commands at any job count (`tests/test_control_plane.py` checks
  it at 200 and 5,000 jobs, and that none reads a whole index or walks the keyspace): a job's
  status reads its record, work and queue rank in one pipelined round trip; the job list and the
  overview page read their newest 50 jobs in one; health and `/metrics` read the registry's sets
  and the counters; a submit checks both caps with two `ZCARD`s and writes the record, its indexes
  and its lane entry in one transaction. Times that differ between the counts are the shared
  machine's noise, not the count.
- What a queued job holds: its record (a hash, kept in Redis' compact encoding by
  `hash-max-ziplist-value 1024`, which zoomq's own Redis, compose and Kubernetes set: 2.5× smaller
  than the default's hashtable; set it on a Redis of your own), its entries in the queue, the
  index of every job, its submitter's unfinished jobs and `zoomq:job-who` (its owner and submitter,
  so the sweep finds the entries of a record lost otherwise), its piece in the submitter's lane, and
  the Celery token that asks a worker for it (the largest share: kombu's envelope). A job submitted
  with an API key has one more index entry (its owner's list). An ended job keeps its record and
  its entries in the index of every job, the expiry index and `zoomq:job-who` until `ZOOMQ_JOB_TTL`;
  the workers' retention sweep then deletes every key and index entry of it.
- Before issue 26's changes, Redis held about 3.2 KiB per queued job, a submit read every unfinished
  job of its submitter (224 commands at 200 queued jobs, 5,023 at 5,000: filling a queue was
  quadratic), and the job list made 151 round trips to Redis for 50 jobs (now 2).
"""
    write_section(out, "queue-control-plane", body)
