"""``zoomq bench queue``: the queue's own costs, on this machine, with the miniature models.

A private redis-server and real worker processes (as in production, one OpenVINO thread per
process), measured in one run:
- submit-to-start latency of a job on an idle worker, and jobs per second for a burst of tiny jobs;
- throughput of 2 worker processes × 1 thread against 1 × 1;
- wall time of one zoom job with 1 and with 2 workers (pipelining keyframes and encoding).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoomq.node.bench_report import machine, write_section
from zoomq.node.processes import Fleet

if TYPE_CHECKING:
    from zoomq.producer import Producer

TINY: dict[str, Any] = dict(steps=1, width=64, height=64)  # a job that is nearly all queue
WORK: dict[str, Any] = dict(steps=8, width=256, height=256)  # a job that is mostly render
ZOOM: dict[str, Any] = dict(keyframes=6, size=256, mask_width=64, interpolation_frames=15, steps=10, seed=1)
QUICK_ZOOM: dict[str, Any] = {**ZOOM, "keyframes": 4, "interpolation_frames": 6, "steps": 4}  # --quick: a third


@dataclass(frozen=True)
class _Stage:
    """The producer on the fleet's Redis and the names of the two models its workers serve."""

    producer: Producer
    t2i: str
    inpaint: str


def run(out: Path, quick: bool = False, say: Callable[[str], None] = print) -> dict[str, float]:
    """Measure, write the ``queue`` section of ``out``; returns the figures."""
    from zoomq.config import settings
    from zoomq.model_prep.bench_models import cached_model
    from zoomq.producer import Producer

    n = 10 if quick else 30
    say("preparing the miniature models")
    models = [cached_model(settings().cache_dir / "bench-models", kind, full=False) for kind in ("t2i", "inpaint")]
    with Fleet(models, concurrency=1, threads=1) as fleet:
        stage = _Stage(Producer(fleet.settings), models[0].name, models[1].name)
        zoom = QUICK_ZOOM if quick else ZOOM
        figures = _one_worker(fleet, stage, n, zoom, say)
        figures.update(_two_processes(fleet, stage, n, say))
        figures.update(_two_workers(fleet, stage, zoom, say))
    _write(out, figures, quick, zoom)
    return figures


# -- the three set-ups ----------------------------------------------------------------------------

def _one_worker(fleet: Fleet, stage: _Stage, n: int, zoom: dict[str, Any],
                say: Callable[[str], None]) -> dict[str, float]:
    """Latency, a burst of tiny jobs, throughput and a zoom's wall time on one single-thread worker."""
    fleet.start("one")
    _burst(stage, 2, **TINY)  # compile and cache before measuring
    say("submit-to-start latency on an idle worker")
    latencies = _latencies(stage, n)
    figures = {"latency_median_ms": statistics.median(latencies) * 1000, "latency_max_ms": max(latencies) * 1000}
    say("a burst of tiny jobs")
    figures["tiny_jobs_per_s"] = _burst(stage, 3 * n, **TINY)
    _burst(stage, 1, **WORK)
    say("throughput: 1 process x 1 thread")
    figures["one_by_one_jobs_per_s"] = _burst(stage, n // 2, **WORK)
    say("zoom wall time with 1 worker")
    figures["zoom_1_worker_s"] = _zoom(stage, zoom)
    fleet.stop_workers()
    return figures


def _two_processes(fleet: Fleet, stage: _Stage, n: int, say: Callable[[str], None]) -> dict[str, float]:
    """Throughput of one worker with two single-thread processes."""
    fleet.start("two", concurrency=2)
    _burst(stage, 4, **WORK)  # both processes compile before measuring
    say("throughput: 2 processes x 1 thread")
    figures = {"two_by_one_jobs_per_s": _burst(stage, n // 2, **WORK)}
    fleet.stop_workers()
    return figures


def _two_workers(fleet: Fleet, stage: _Stage, zoom: dict[str, Any], say: Callable[[str], None]) -> dict[str, float]:
    """A zoom's wall time on two single-thread workers."""
    fleet.start("a")
    fleet.start("b")
    _burst(stage, 4, **WORK)
    say("zoom wall time with 2 workers")
    figures = {"zoom_2_workers_s": _zoom(stage, zoom)}
    fleet.stop_workers()
    return figures


# -- the measurements -----------------------------------------------------------------------------

def _latencies(stage: _Stage, count: int) -> list[float]:
    """Seconds from creation to start of ``count`` tiny jobs, one at a time."""
    latencies = []
    for i in range(count):
        job = stage.producer.submit_image("latency", model=stage.t2i, seed=i, **TINY)
        record = stage.producer.wait(job, poll=0.01, timeout=60)
        latencies.append(record["started"] - record["created"])
    return latencies


def _burst(stage: _Stage, count: int, **options: Any) -> float:
    """Submit ``count`` image jobs at once; returns jobs per second until the last finished."""
    start = time.time()
    ids = [stage.producer.submit_image("bench", model=stage.t2i, seed=i, **options) for i in range(count)]
    records = [stage.producer.wait(job, poll=0.05, timeout=900) for job in ids]
    failed = [r for r in records if r["state"] != "done"]
    if failed:
        raise RuntimeError(f"bench job failed: {failed[0].get('error')}")
    return count / (max(r["finished"] for r in records) - start)


def _zoom(stage: _Stage, zoom: dict[str, Any]) -> float:
    """Seconds from submitting ``zoom`` to its end."""
    start = time.time()
    job = stage.producer.submit_zoom("bench", model=stage.inpaint, **zoom)
    record = stage.producer.wait(job, poll=0.05, timeout=1800)
    if record["state"] != "done":
        raise RuntimeError(f"bench zoom failed: {record.get('error')}")
    return record["finished"] - start


# -- the report -----------------------------------------------------------------------------------

def _write(out: Path, f: dict[str, float], quick: bool, zoom: dict[str, Any]) -> None:
    speedup = f["two_by_one_jobs_per_s"] / f["one_by_one_jobs_per_s"]
    frames = (zoom["keyframes"] - 1) * zoom["interpolation_frames"] + 1
    shape = f"zoom ({zoom['keyframes']} keyframes × {zoom['steps']} steps, {zoom['size']} px, {frames} frames)"
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
| {shape}: 1 worker | {f['zoom_1_worker_s']:.1f} s |
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
