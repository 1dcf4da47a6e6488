"""``zoomq bench queue``: the queue's own costs, on this machine, with the miniature models.

A private redis-server and real worker processes (as in production, one OpenVINO thread per
process), measured in one run:
- submit-to-start latency of a job on an idle worker, and jobs per second for a burst of tiny jobs;
- throughput of 2 worker processes × 1 thread against 1 × 1;
- wall time of one zoom job with 1 and with 2 workers (pipelining keyframes and encoding).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from zoomq.bench.report import machine, write_section
from zoomq.node.processes import RedisServer, WorkerProcess


def _models(cache: Path) -> tuple[Path, Path]:
    from zoomq.model_prep.prepare import prepare_random

    t2i = prepare_random(cache / "bench-t2i", full=False, report=lambda _: None).folder
    inpaint = prepare_random(cache / "bench-inpaint", full=False, inpainting=True, report=lambda _: None).folder
    return t2i, inpaint


def _burst(producer, count: int, **options) -> tuple[float, list[dict]]:
    """Submit ``count`` image jobs at once; returns (jobs per second, final records)."""
    start = time.time()
    ids = [producer.submit_image("bench", model="bench-t2i", seed=i, **options) for i in range(count)]
    records = [producer.wait(job, poll=0.05, timeout=900) for job in ids]
    failed = [r for r in records if r["state"] != "done"]
    if failed:
        raise RuntimeError(f"bench job failed: {failed[0].get('error')}")
    return count / (max(r["finished"] for r in records) - start), records


def run(out: Path, quick: bool = False, say=print) -> dict:
    from zoomq.config import settings
    from zoomq.producer import Producer

    n = 10 if quick else 30
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="zoomq-bench-") as tmp:
        tmp = Path(tmp)
        say("preparing the miniature models")
        t2i, inpaint = _models(settings().cache_dir / "bench-models")
        server = RedisServer(tmp / "redis")
        os.environ["ZOOMQ_REDIS_URL"] = server.url
        workers: list[WorkerProcess] = []

        def start(name: str, concurrency: int = 1) -> WorkerProcess:
            w = WorkerProcess(name, server.url, [t2i, inpaint], tmp, concurrency=concurrency, threads=1)
            workers.append(w)
            return w

        def stop_all() -> None:
            while workers:
                workers.pop().stop()

        try:
            producer = Producer()
            tiny = dict(steps=1, width=64, height=64)
            start("one")
            _burst(producer, 2, **tiny)  # compile and cache before measuring
            say("submit-to-start latency on an idle worker")
            latencies = []
            for i in range(n):
                job = producer.submit_image("latency", model="bench-t2i", seed=i, **tiny)
                record = producer.wait(job, poll=0.01, timeout=60)
                latencies.append(record["started"] - record["created"])
            figures["latency_median_ms"] = statistics.median(latencies) * 1000
            figures["latency_max_ms"] = max(latencies) * 1000
            say("a burst of tiny jobs")
            figures["tiny_jobs_per_s"], _ = _burst(producer, 3 * n, **tiny)

            work = dict(steps=8, width=256, height=256)
            _burst(producer, 1, **work)
            say("throughput: 1 process x 1 thread")
            figures["one_by_one_jobs_per_s"], _ = _burst(producer, n // 2, **work)
            zoom = dict(keyframes=6, size=256, mask_width=64, interpolation_frames=15, steps=10, seed=1)
            say("zoom wall time with 1 worker")
            figures["zoom_1_worker_s"] = _zoom(producer, zoom)
            stop_all()

            start("two", concurrency=2)
            _burst(producer, 4, **work)  # both processes compile before measuring
            say("throughput: 2 processes x 1 thread")
            figures["two_by_one_jobs_per_s"], _ = _burst(producer, n // 2, **work)
            stop_all()

            start("a")
            start("b")
            _burst(producer, 4, **work)
            say("zoom wall time with 2 workers")
            figures["zoom_2_workers_s"] = _zoom(producer, zoom)
        finally:
            stop_all()
            server.stop()
    _write(out, figures, quick)
    return figures


def _zoom(producer, options: dict) -> float:
    start = time.time()
    job = producer.submit_zoom("bench", model="bench-inpaint", **options)
    record = producer.wait(job, poll=0.05, timeout=1800)
    if record["state"] != "done":
        raise RuntimeError(f"bench zoom failed: {record.get('error')}")
    return record["finished"] - start


def _write(out: Path, f: dict, quick: bool) -> None:
    speedup = f["two_by_one_jobs_per_s"] / f["one_by_one_jobs_per_s"]
    zoom_gain = f["zoom_1_worker_s"] / f["zoom_2_workers_s"]
    body = f"""## Queue (`zoomq bench queue{' --quick' if quick else ''}`)

Measured {date.today().isoformat()} on {machine()}: a private redis-server, real `zoomq worker`
processes with one OpenVINO thread each, the miniature models. Rerun with `zoomq bench queue`
(about 3 minutes; `--quick` for a shorter run).

| what | figure |
|---|---|
| submit-to-start latency, idle worker (median / max) | {f['latency_median_ms']:.0f} ms / {f['latency_max_ms']:.0f} ms |
| tiny jobs (1 step, 64 px), burst through 1 worker | {f['tiny_jobs_per_s']:.1f} jobs/s |
| image jobs (8 steps, 256 px): 1 process × 1 thread | {f['one_by_one_jobs_per_s']:.2f} jobs/s |
| image jobs (8 steps, 256 px): 2 processes × 1 thread | {f['two_by_one_jobs_per_s']:.2f} jobs/s ({speedup:.2f}×) |
| zoom (6 keyframes × 10 steps, 256 px, 76 frames): 1 worker | {f['zoom_1_worker_s']:.1f} s |
| the same zoom: 2 workers | {f['zoom_2_workers_s']:.1f} s ({zoom_gain:.2f}×) |

Reading the figures:
- Queue overhead is small next to any render: a few ms from submit to start.
- Two single-thread processes on two cores give close to twice the throughput of one. This
  needs OpenVINO's core pinning off, which zoomq does whenever `--threads` is set; with pinning
  on, both processes shared one core and gained nothing.
- One zoom job barely speeds up with a second worker: its keyframes form a chain (each is
  outpainted from the one before), and only segment encoding overlaps with rendering. Encoding is
  a small share of a zoom, even on the miniature model. More workers pay off across jobs, not
  within one.
"""
    write_section(out, "queue", body)
