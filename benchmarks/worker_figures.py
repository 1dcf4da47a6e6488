"""The worker's side of the render benchmark: real ``zoomq worker`` processes on a private Redis.

Measured with the full-size text-to-image model and default settings:
- start-up: seconds from launching a worker (a 512 px job already queued) to the end of the job's
  first denoising step, with the default settings and with OpenVINO's compile cache on and warm;
- peak RSS of the process that renders (the prefork child) over a whole 512 px job, and its peak
  private memory (RSS without the model files' shared page cache);
- throughput of 1 process × all threads against 2 processes × half the threads each, on a batch
  of jobs after every process has loaded the model: the figure the worker's default is chosen by.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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


def _first_step(fleet: Fleet, producer: Producer, folder: Path, cache: Path, steps: int,
                compile_cache: bool = False) -> dict:
    """Launch a worker with one job waiting; when does its first step end, and its peak RSS."""
    job = producer.submit_image(PROMPT, model=folder.name, steps=steps, seed=1)
    start = time.time()
    env = {"ZOOMQ_CACHE_DIR": str(cache), **({"ZOOMQ_COMPILE_CACHE": "on"} if compile_cache else {})}
    worker = fleet.start(f"start-{job[:8]}", env=env)
    private = _PrivatePeak(worker.proc.pid)
    private.start()
    try:
        wait_for(lambda: (producer.jobs.get(job) or {}).get("work_done", 0) >= 1, 900, "the first step")
        first = time.time() - start
        record = producer.wait(job, poll=0.2, timeout=1800)
        if record["state"] != "done":
            raise RuntimeError(f"bench job failed: {record.get('error')}")
        return {"first_step": first, "step": record["seconds_per_step"],
                "peak_rss": _status(worker.proc.pid, "VmHWM"), "peak_private": private.stop(),
                **_warmup_figures(worker.log_path)}
    finally:
        private.stop()
        fleet.stop_workers()


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
    """A worker's start-up and memory: with the default settings, then with the compile cache on,
    storing the blobs and then warm."""
    say("  worker launch, default settings")
    default = _first_step(fleet, producer, folder, cache, steps)
    say("  worker launch, compile cache on (storing the blobs)")
    stored = _first_step(fleet, producer, folder, cache, steps, compile_cache=True)
    say("  worker launch, compile cache on (warm)")
    cached = _first_step(fleet, producer, folder, cache, steps, compile_cache=True)
    return dict(first_step=default["first_step"], first_step_cache_store=stored["first_step"],
                first_step_cache_warm=cached["first_step"], seconds_per_step=default["step"],
                worker_peak_rss=default["peak_rss"], worker_peak_private=default["peak_private"],
                worker_peak_rss_cached=cached["peak_rss"],
                **{f"warmup_{k}": v for k, v in default.items() if k in ("import", "compile")},
                **{f"warmup_{k}_cached": v for k, v in cached.items() if k in ("import", "compile")})
