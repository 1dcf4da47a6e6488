"""``python -m benchmarks split``: one zoom keyframe on two workers sharing its guided steps, against one.

Real ``zoomq worker`` processes with one OpenVINO thread each (core pinning is off whenever
``--threads`` is set, so the OS puts them on separate cores) on a private redis-server, the
full-size inpainting model at 512 px (``--tiny``: the miniature one, which checks the benchmark
itself). In one run: a 2-keyframe zoom on one worker, then the same zoom on two idle workers, where
each keyframe's unconditional half runs on the other worker (``worker.guidance_split_redis``), then again with
DeepCache on as well (``--cache-interval 3``: the two ways to make one job faster, together).
Measured from the workers' own log lines: each keyframe's wall time, and the split's exchange
(sending the input and waiting for the helper's half, beyond the leader's own half). The keyframes
of the runs are compared pixel for pixel. Last, a whole 5-keyframe zoom video, request to video:
the default on one worker against both ways on two.
"""

from __future__ import annotations

import io
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoomq.model_prep.bench_models import cached_model
from zoomq.node.bench_report import machine, write_section
from zoomq.node.processes import Fleet, WorkerProcess, wait_for

if TYPE_CHECKING:
    from zoomq.producer import Producer

PROMPT = "an endless spiral library, oil painting"
SIZE, MASK = 512, 128
CACHE = 3  # DeepCache's interval when both ways run together (its authors' and diffusers' example)
WHOLE = 5  # keyframes of the whole zoom video
GOAL_SPLIT, GOAL_BOTH = 0.6, 0.4  # keyframe time against one worker: split alone; split with DeepCache


@dataclass
class _Session:
    """One run of the benchmark: its producer, model and options, and what it has measured so far."""

    producer: Producer
    model: str
    steps: int
    frames: int  # the whole video's, between two keyframes
    repeats: int
    say: Callable[[str], None]
    runs: list[dict] = field(default_factory=list)  # one a measured zoom: its workers, keyframe times, splits
    keyframes: dict[str, list[bytes]] = field(default_factory=dict)  # set-up → the first run's two keyframes
    whole: dict[str, list[float]] = field(default_factory=lambda: {"one": [], "two": []})  # whole videos, s

    def zoom(self, steps: int, seed: int, keyframes: int = 2, frames: int = 2, **options: Any) -> tuple[str, float]:
        """Submit a zoom and wait for it: its job id and the seconds from the request to the video."""
        start = time.time()
        job = self.producer.submit_zoom(PROMPT, model=self.model, keyframes=keyframes, size=SIZE, mask_width=MASK,
                                        interpolation_frames=frames, steps=steps, seed=seed, **options)
        record = self.producer.wait(job, poll=0.2, timeout=4 * 3600)
        if record["state"] != "done":
            raise RuntimeError(f"bench zoom failed: {record.get('error')}")
        return job, time.time() - start

    def keep_keyframes(self, setup: str, job: str) -> None:
        """The first run's keyframes of ``setup``, to compare pixels across set-ups."""
        if setup in self.keyframes:
            return
        found = [self.producer.artifact(job, f"keyframe-{k:03d}.png") for k in range(2)]
        self.keyframes[setup] = [data for data in found if data is not None]
        if len(self.keyframes[setup]) < len(found):
            raise RuntimeError(f"bench zoom {job}: a keyframe is missing from the artifact store")


def run(out: Path, tiny: bool = False, repeats: int = 1, steps: int | None = None, models_dir: Path | None = None,
        say: Callable[[str], None] = print, frames: int | None = None) -> dict:
    """Measure and write the report's section; ``frames``: the whole video's frames between two
    keyframes (default the zoom's own, 30)."""
    from zoomq.config import settings
    from zoomq.model import manifest as mf
    from zoomq.producer import Producer
    from zoomq.zoom.settings import ZoomSettings

    model_dir = cached_model(models_dir or settings().cache_dir / "bench-models", "inpaint", full=not tiny, say=say)
    started = time.time()
    with Fleet([model_dir], threads=1, start_timeout=1800) as fleet:
        session = _Session(Producer(fleet.settings), model_dir.name, steps or mf.read(model_dir).defaults["steps"],
                           frames or ZoomSettings.interpolation_frames, repeats, say)
        _on_one_worker(fleet, session)
        _on_two_workers(fleet, session)
    result = _result(session, tiny, time.time() - started)
    _write(out, result)
    return result


def _on_one_worker(fleet: Fleet, s: _Session) -> None:
    """The 2-keyframe zoom and the whole video on one single-thread worker, the default mode."""
    s.say("one worker, one thread: warming up")
    solo = fleet.start("solo")
    s.zoom(1, seed=99)  # compiles whatever the warm-up has not
    for r in range(s.repeats):
        s.say(f"one worker: a 2-keyframe zoom, {s.steps} steps, {SIZE} px (run {r + 1}/{s.repeats})")
        job, _ = s.zoom(s.steps, seed=1)
        s.runs.append({"workers": 1, "keyframes": _pieces(solo.log_path.read_text(errors="replace"), job)})
        s.keep_keyframes("one", job)
    for r in range(s.repeats):
        s.say(f"one worker: a whole {WHOLE}-keyframe zoom video (run {r + 1}/{s.repeats})")
        s.whole["one"].append(s.zoom(s.steps, seed=2, keyframes=WHOLE, frames=s.frames)[1])
    fleet.stop_workers()


def _on_two_workers(fleet: Fleet, s: _Session) -> None:
    """The 2-keyframe zoom split over two single-thread workers, without DeepCache and with it; then
    the whole video with both."""
    from zoomq.worker import guidance_split_redis

    s.say("two workers, one thread each: warming up")
    pair = [fleet.start("lead"), fleet.start("help")]

    def idle_pair(timeout: float) -> None:
        wait_for(lambda: len(guidance_split_redis.idle_helpers(s.producer.redis, s.model)) == 2, timeout,
                 "two idle workers")

    # Both warm, each leading once, with DeepCache at 2 steps: each compiles the
    # half-batch UNet, its shallow branch and the VAE parts.
    for seed in (97, 98):
        idle_pair(1800)
        s.zoom(2, seed=seed, cache_interval=2)
    for cache, label in ((1, "split"), (CACHE, f"split and DeepCache {CACHE}")):
        for r in range(s.repeats):
            idle_pair(600)
            s.say(f"two workers: the same zoom, {label} (run {r + 1}/{s.repeats})")
            job, _ = s.zoom(s.steps, seed=1, cache_interval=cache)
            s.runs.append({"workers": 2, "cache": cache, **_from_logs(pair, job)})
            s.keep_keyframes(f"two-{cache}", job)
    for r in range(s.repeats):
        idle_pair(600)
        s.say(f"two workers: the whole zoom video, split and DeepCache {CACHE} (run {r + 1}/{s.repeats})")
        s.whole["two"].append(s.zoom(s.steps, seed=2, keyframes=WHOLE, frames=s.frames, cache_interval=CACHE)[1])


def _from_logs(workers: list[WorkerProcess], job: str) -> dict:
    """``job``'s keyframe times and splits, from the logs of ``workers``."""
    logs = [w.log_path.read_text(errors="replace") for w in workers]
    return {"keyframes": {k: v for log in logs for k, v in _pieces(log, job).items()},
            "splits": {k: v for log in logs for k, v in _splits(log, job).items()}}


def _result(s: _Session, tiny: bool, seconds: float) -> dict:
    """Everything measured, with the medians (``figures``) the report shows."""
    from zoomq.render import png

    recipe = png.read_recipe(io.BytesIO(s.keyframes["one"][1]))
    one = s.keyframes["one"]
    return {"tiny": tiny, "steps": s.steps, "repeats": s.repeats, "runs": s.runs, "seconds": seconds,
            "precision": recipe.get("inference_precision"),
            "psnr": [_psnr(_pixels(a), _pixels(b)) for a, b in zip(one, s.keyframes["two-1"])],
            "psnr_cached": [_psnr(_pixels(a), _pixels(b)) for a, b in zip(one, s.keyframes[f"two-{CACHE}"])],
            "whole": {k: statistics.median(v) for k, v in s.whole.items()}, "frames": s.frames,
            "figures": _figures(s.runs)}


def _pieces(log: str, job: str) -> dict[int, float]:
    """Keyframe → seconds, from a worker's ``piece ended`` lines for ``job``."""
    found = re.finditer(rf"piece ended: job={job} piece=keyframe:(\d+) \S+ seconds=([0-9.]+) outcome=done", log)
    return {int(m.group(1)): float(m.group(2)) for m in found}


def _splits(log: str, job: str) -> dict[int, dict]:
    """Keyframe → the leader's ``split finished`` figures for ``job``."""
    found = re.finditer(rf"split finished: job={job} piece=keyframe:(\d+) worker=\S+ helper=(\S+) "
                        r"split_calls=(\d+) exchange_seconds=([0-9.]+) own_seconds=([0-9.]+)", log)
    return {int(m.group(1)): {"helper": m.group(2), "calls": int(m.group(3)), "exchange": float(m.group(4)),
                              "own": float(m.group(5))} for m in found}


def _pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _figures(runs: list[dict]) -> dict:
    """Medians over the runs, keyframe by keyframe pooled: keyframe 1 is the zoom's outpainting
    keyframe proper, keyframe 0 the first one (from a blank canvas)."""
    def median(workers: int, key, cache: int = 1) -> float:
        values = [key(r, k) for r in runs if r["workers"] == workers and r.get("cache", 1) == cache
                  for k in (0, 1) if k in r["keyframes"]]
        return statistics.median(values) if values else float("nan")

    one = median(1, lambda r, k: r["keyframes"][k])
    two = median(2, lambda r, k: r["keyframes"][k])
    both = median(2, lambda r, k: r["keyframes"][k], cache=CACHE)
    split_runs = [(r, k) for r in runs if r["workers"] == 2 and r.get("cache", 1) == 1
                  for k in (0, 1) if k in r.get("splits", {})]
    both_split = sum(k in r.get("splits", {}) for r in runs if r.get("cache", 1) == CACHE for k in (0, 1))
    exchange = statistics.median(r["splits"][k]["exchange"] for r, k in split_runs) if split_runs else float("nan")
    calls = statistics.median(r["splits"][k]["calls"] for r, k in split_runs) if split_runs else 0
    own = statistics.median(r["splits"][k]["own"] for r, k in split_runs) if split_runs else float("nan")
    return {"one_worker_s": one, "two_workers_s": two, "ratio": two / one, "both_s": both, "both_ratio": both / one,
            "keyframes_split_cached": both_split, "exchange_s": exchange,
            "exchange_share": exchange / two, "exchange_per_call_ms": 1000 * exchange / max(calls, 1),
            "own_half_s": own, "split_calls": calls, "keyframes_split": len(split_runs)}


def _write(out: Path, result: dict) -> None:
    """The ``split`` section of ``out``."""
    tiny = result["tiny"]
    model = "the miniature inpainting model" if tiny else "the full-size SD2 inpainting model (random weights)"
    check = ("\n**`--tiny`: these figures check the benchmark itself, not the split** (the miniature UNet "
             "runs a step in milliseconds, so the exchange and the decoder dominate).\n" if tiny else "")
    body = f"""## Guidance split (`python -m benchmarks split{' --tiny' if tiny else ''}`)

Measured {date.today().isoformat()} on {machine()}: {model}, one zoom keyframe pair (2 keyframes,
{SIZE} px, {result['steps']} steps, guidance 7.5, precision {result['precision']}), real `zoomq worker`
processes with one OpenVINO thread each on a private redis-server, {result['repeats']} run(s), medians.
Rerun with `python -m benchmarks split` (`--tiny` on the miniature model).
{check}
{chr(10).join(_rows(result))}

Reading the figures:
- The split halves the UNet's work per worker; the VAE encode and decode and the keyframe's
  file handling do not split, so the keyframe takes more than half the time.
- The exchange counts the wait for the helper's half beyond the leader's own, so it includes the
  two halves' difference in speed, not only Redis: at {SIZE} px a step moves 144 KiB to the helper
  (9-channel input) and 64 KiB back.
- With DeepCache each worker keeps its own half's deep features, so a cached step is a shallow
  call on both; its pixels differ from the default mode's by what caching changes, not by the split.
- In the whole video the second worker also renders the segments between finished keyframes; a
  helper that sees such work waiting leaves the split at once (throughput first), so keyframes
  after the first run split only while the queue is empty.
"""
    write_section(out, "split", body)


def _rows(result: dict) -> list[str]:
    """The table: keyframe times and their goals, the exchange, the splits, the pixels, the whole video."""
    f, whole, runs = result["figures"], result["whole"], result["repeats"]
    goal = "met" if f["ratio"] <= GOAL_SPLIT else "not met"
    goal_both = "met" if f["both_ratio"] <= GOAL_BOTH else "not met"
    psnr = " / ".join(f"{p:.1f}" for p in result["psnr"])
    psnr_cached = " / ".join(f"{p:.1f}" for p in result["psnr_cached"])
    return [
        "| what | figure |",
        "|---|---|",
        f"| one keyframe, one worker | {f['one_worker_s']:.2f} s |",
        f"| one keyframe, two workers sharing its guided steps | {f['two_workers_s']:.2f} s "
        f"({f['ratio']:.2f}×; goal ≤ {GOAL_SPLIT}×: {goal}) |",
        f"| one keyframe, two workers sharing its guided steps, DeepCache interval {CACHE} | {f['both_s']:.2f} s "
        f"({f['both_ratio']:.2f}×; goal ≤ {GOAL_BOTH}×, 2.5× faster: {goal_both}) |",
        f"| the exchange: sending the input and waiting beyond the own half, per keyframe | {f['exchange_s']:.2f} s "
        f"({100 * f['exchange_share']:.1f} % of the keyframe; {f['exchange_per_call_ms']:.1f} ms a guided call) |",
        f"| the leader's own halves, per keyframe | {f['own_half_s']:.2f} s over {f['split_calls']:.0f} guided calls |",
        f"| keyframes split / runs, without DeepCache; with | {f['keyframes_split']} / {runs}; "
        f"{f['keyframes_split_cached']} / {runs} |",
        f"| pixels, split against one worker (keyframe 0 / 1) | {psnr} dB PSNR |",
        f"| pixels, split with DeepCache {CACHE} against one worker without (keyframe 0 / 1) | {psnr_cached} dB PSNR |",
        f"| a whole {WHOLE}-keyframe zoom video ({result['frames']} frames between keyframes), request to video: "
        f"one worker, default | {whole['one']:.1f} s |",
        f"| the same video on two workers, split and DeepCache {CACHE} | {whole['two']:.1f} s "
        f"({whole['two'] / whole['one']:.2f}×) |",
    ]
