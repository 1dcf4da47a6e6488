"""The worker's side of the render benchmark: real ``zoomq worker`` processes on a private Redis.

Measured with the full-size text-to-image model and default settings:
- start-up: seconds from launching a worker (a 512 px job already queued) to the start and to the
  end of the job's first denoising step: cold (compile cache off) and with the default settings, the
  compile cache first storing, then warm;
- peak RSS of the process that renders (the prefork child) over a whole 512 px job, and its peak
  private memory (RSS without the model files' shared page cache);
- throughput of 1 process × all threads against 2 processes × half the threads each, on a batch
  of jobs after every process has loaded the model: the figure the worker's default is chosen by.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, cast

from benchmarks.probe import PROMPT
from zoomq.node.processes import Fleet, wait_for

if TYPE_CHECKING:
    from zoomq.producer import Producer


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo.extend(int(c) for c in task.read_text().split())
    return pids


def _status(pid: int, field: str) -> int:
    """The largest ``field`` (VmHWM, RssAnon...) of /proc/PID/status over ``pid``'s process tree, in bytes."""
    largest = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    largest = max(largest, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return largest


class _PrivatePeak(threading.Thread):
    """Samples the private (anonymous) memory of a process tree every 0.1 s. The kernel keeps a
    peak of RSS only, and RSS also counts the model files' page cache that OpenVINO maps: clean,
    shared by every process on the node and reclaimable."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, _status(self.pid, "RssAnon"))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def _denoise_start(producer: Producer, job: str) -> float | None:
    """When the job's first denoising step began (wall clock), once it has: the worker's progress
    at step 0 writes the stage "... (0/N)" and the time it did so."""
    record = producer.jobs.get(job) or {}
    if record.get("work_done", 0) >= 1:
        raise RuntimeError("the first step ended before its start was seen")
    if str(record.get("stage", "")).endswith(f"(0/{record.get('work_total')})") and record.get("heartbeat"):
        return float(record["heartbeat"])
    return None


def first_step(fleet: Fleet, producer: Producer, folder: Path, cache: Path, steps: int,
                compile_cache: str = "auto") -> dict:
    """Launch a worker with one job waiting: when does the job's first step begin, when does it end,
    and the worker's peak RSS. ``compile_cache``: ``ZOOMQ_COMPILE_CACHE`` (auto: the default)."""
    job = producer.submit_image(PROMPT, model=folder.name, steps=steps, seed=1)
    start = time.time()
    env = {"ZOOMQ_CACHE_DIR": str(cache), "ZOOMQ_COMPILE_CACHE": compile_cache, "ZOOMQ_LOG_FORMAT": "json"}
    worker = fleet.start(f"start-{job[:8]}", env=env)
    private = _PrivatePeak(worker.proc.pid)
    private.start()
    try:
        began = cast(float, wait_for(lambda: _denoise_start(producer, job), 900, "the first step to begin",
                                     interval=0.02))
        wait_for(lambda: (producer.jobs.get(job) or {}).get("work_done", 0) >= 1, 900, "the first step")
        first = time.time() - start
        record = producer.wait(job, poll=0.2, timeout=1800)
        if record["state"] != "done":
            raise RuntimeError(f"bench job failed: {record.get('error')}")
        return {"denoise_start": began - start, "first_step": first, "step": record["seconds_per_step"],
                "peak_rss": _status(worker.proc.pid, "VmHWM"), "peak_private": private.stop(),
                **_warmup_figures(worker.log_path), "timeline": _timeline(worker.log_path, start)}
    finally:
        private.stop()
        fleet.stop_workers()


_MILESTONES = (("warm-up begins", "warm-up of "), ("model compiled", "compiled for its default render"),
               ("render core imported", "render core imported"))


def _timeline(log: Path, launched: float) -> dict[str, float]:
    """Seconds from the launch to each milestone of the warm-up, from the worker's JSON log."""
    times = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or "time" not in entry:
            continue
        for name, text in _MILESTONES:
            if name not in times and text in str(entry.get("message", "")):
                at = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
                times[name] = at.timestamp() - launched
    return times


def _warmup_figures(log: Path) -> dict:
    """The warm-up's two parts as the worker logged them: seconds to import the render core and to
    compile the model (they run at once, in two threads)."""
    text = log.read_text(errors="replace")
    figures = {}
    for key, pattern in (("import", r"render core imported in ([0-9.]+) s"),
                         ("compile", r"compiled for its default render in ([0-9.]+) s")):
        found = re.search(pattern, text)
        if found:
            figures[key] = float(found.group(1))
    return figures


def _throughput(fleet: Fleet, producer: Producer, folder: Path, cache: Path, processes: int, jobs: int,
                steps: int) -> float:
    """Jobs per minute of one worker node with ``processes`` processes sharing the cores."""
    model = folder.name
    threads = max(1, (os.cpu_count() or 1) // processes)
    fleet.start(f"x{processes}", concurrency=processes, threads=threads if processes > 1 else None,
                env={"ZOOMQ_CACHE_DIR": str(cache)})
    try:
        # Every process loads the model before the clock starts: one short job each, at once.
        warm = [producer.submit_image(PROMPT, model=model, steps=1, seed=i) for i in range(processes)]
        for job in warm:
            producer.wait(job, poll=0.2, timeout=1800)
        start = time.time()
        ids = [producer.submit_image(PROMPT, model=model, steps=steps, seed=i) for i in range(jobs)]
        records = [producer.wait(job, poll=0.2, timeout=3600) for job in ids]
        if any(r["state"] != "done" for r in records):
            raise RuntimeError("a throughput job failed")
        return 60 * jobs / (max(r["finished"] for r in records) - start)
    finally:
        fleet.stop_workers()


def measure(t2i_model: Path, settings_cache: Path, say: Callable[[str], None], quick: bool = False) -> dict:
    """Worker figures for the prepared full-size ``t2i_model`` (see the module docstring)."""
    from zoomq.producer import Producer

    folder = Path(t2i_model)
    steps = 2 if quick else 4
    with Fleet([folder], start_timeout=600) as fleet:
        cache = fleet.folder / "cache"
        cache.mkdir()
        # The precision measurement is a node's one-time cost, not the model's: carry it over.
        if (settings_cache / "precision.json").exists():
            shutil.copy(settings_cache / "precision.json", cache / "precision.json")
        producer = Producer(fleet.settings)
        figures = _launches(fleet, producer, folder, cache, steps, say)
        jobs = 2 if quick else 4
        for processes in (1, 2):
            threads = max(1, (os.cpu_count() or 1) // processes)
            say(f"  throughput: {processes} process{'es' if processes > 1 else ''} x {threads} threads, {jobs} jobs")
            figures[f"jobs_per_min_{processes}"] = _throughput(fleet, producer, folder, cache, processes, jobs, steps)
    figures["steps"] = steps
    return figures


def _launches(fleet: Fleet, producer: Producer, folder: Path, cache: Path, steps: int,
              say: Callable[[str], None]) -> dict:
    """A worker's start-up and memory: cold (no compile cache), with the default settings storing
    the warm-up's compile in the cache, and with the default settings and that cache warm."""
    say("  worker launch, compile cache off (cold)")
    cold = first_step(fleet, producer, folder, cache, steps, compile_cache="off")
    say("  worker launch, default settings (the compile cache storing its blobs)")
    stored = first_step(fleet, producer, folder, cache, steps)
    say("  worker launch, default settings (the compile cache warm)")
    warm = first_step(fleet, producer, folder, cache, steps)
    return dict(first_step=warm["first_step"], denoise_start=warm["denoise_start"],
                first_step_cold=cold["first_step"], denoise_start_cold=cold["denoise_start"],
                first_step_cache_store=stored["first_step"], seconds_per_step=warm["step"],
                worker_peak_rss=warm["peak_rss"], worker_peak_private=warm["peak_private"],
                worker_peak_rss_cold=cold["peak_rss"],
                **{f"warmup_{k}": v for k, v in warm.items() if k in ("import", "compile")},
                **{f"warmup_{k}_cold": v for k, v in cold.items() if k in ("import", "compile")})
