"""Render slots against processes, side by side on the same model and jobs (issue 27):
``--concurrency 1x2 --threads 1`` (one process, two slots sharing one compiled model) against
``--concurrency 2 --threads 1`` (two processes, a copy of the model each). For each: jobs per
minute over a batch of jobs once every slot or process has loaded the model, and the worker's
memory as PSS (each shared page counted once over the processes that share it) summed over its
process tree, at its peak and after the batch.

    python -m benchmarks.slots                 # the full-size 512 px model: run it alone on the machine
    python -m benchmarks.slots --tiny          # the miniature model: checks the harness, not the machine

It prints the figures and writes them as JSON (``--json``); docs/benchmarks.md takes them once
measured on a quiet machine. Other shapes: ``--shapes 1x4,4`` (with ``--threads``) for a 16-core node.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from benchmarks.probe import PROMPT
from benchmarks.worker_figures import _tree
from zoomq.config import settings
from zoomq.model import manifest as mf
from zoomq.model_prep.bench_models import cached_model
from zoomq.node.processes import Fleet
from zoomq.producer import Producer


def pss(pid: int) -> int:
    """Bytes of PSS of ``pid`` and its descendants (``/proc/PID/smaps_rollup``)."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


class PeakPss(threading.Thread):
    """The largest PSS of a process tree, sampled every 0.2 s until ``stop()``."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, pss(self.pid))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def measure_shape(fleet: Fleet, producer: Producer, model: Path, shape: str, threads: int, jobs: int,
                  steps: int, size: int) -> dict:
    """One worker of ``shape`` (``1x2``, ``2``...) with ``threads`` threads a slot: its throughput and PSS."""
    processes, _, slots = shape.partition("x")
    at_once = int(processes) * int(slots or 1)
    worker = fleet.start(f"bench-{shape}", concurrency=shape, threads=threads)
    peak = PeakPss(worker.proc.pid)
    peak.start()
    try:
        def submit(steps: int, seed: int) -> str:
            return producer.submit_image(PROMPT, model=model.name, steps=steps, seed=seed, width=size, height=size)

        # Every slot or process loads the model before the clock starts: one short job each, at once.
        for job in [submit(1, i) for i in range(at_once)]:
            producer.wait(job, poll=0.2, timeout=1800)
        start = time.time()
        ids = [submit(steps, i) for i in range(jobs)]
        records = [producer.wait(job, poll=0.2, timeout=3600) for job in ids]
        if any(r["state"] != "done" for r in records):
            raise RuntimeError(f"a {shape} job failed: {[r.get('error') for r in records if r['state'] != 'done']}")
        seconds = max(r["finished"] for r in records) - start
        after = pss(worker.proc.pid)
        return {"shape": shape, "threads": threads, "jobs": jobs, "steps": steps, "size": size,
                "seconds": seconds, "jobs_per_min": 60 * jobs / seconds, "pss_after": after,
                "pss_peak": max(peak.stop(), after)}  # the samples are 0.2 s apart
    finally:
        peak.stop()
        fleet.stop_workers()


def run(tiny: bool, shapes: list[str], threads: int, jobs: int, steps: int, models_dir: Path | None) -> dict:
    model = cached_model(models_dir or settings().cache_dir / "bench-models", "t2i", full=not tiny, say=print)
    size = mf.read(model).kind["native_size"]
    figures = {}
    with Fleet([model], start_timeout=600) as fleet:
        producer = Producer(fleet.settings)
        for shape in shapes:
            print(f"{shape} --threads {threads}: {jobs} jobs of {steps} steps at {size} px")
            figures[shape] = measure_shape(fleet, producer, model, shape, threads, jobs, steps, size)
            f = figures[shape]
            print(f"  {f['jobs_per_min']:.2f} jobs/min, PSS peak {f['pss_peak'] / 2**30:.2f} GiB, "
                  f"after {f['pss_after'] / 2**30:.2f} GiB")
    first, *others = shapes
    for other in others:
        a, b = figures[first], figures[other]
        print(f"{first} against {other}: throughput {a['jobs_per_min'] / b['jobs_per_min']:.2f}x, "
              f"peak PSS {a['pss_peak'] / b['pss_peak']:.2f}x")
    return {"model": "miniature" if tiny else "full-size", "figures": figures}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.slots", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the miniature model: checks the harness, not the machine")
    p.add_argument("--shapes", default="1x2,2", help="worker shapes to compare, the first against the others")
    p.add_argument("--threads", type=int, default=1, help="OpenVINO threads a slot or process (default 1)")
    p.add_argument("--jobs", type=int, default=4, help="jobs in the measured batch (default 4)")
    p.add_argument("--steps", type=int, default=4, help="steps a job (default 4)")
    p.add_argument("--models-dir", type=Path,
                   help="where the models are cached (default $ZOOMQ_CACHE_DIR/bench-models)")
    p.add_argument("--json", type=Path, help="write the figures there")
    args = p.parse_args(argv)
    result = run(args.tiny, args.shapes.split(","), args.threads, args.jobs, args.steps, args.models_dir)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
