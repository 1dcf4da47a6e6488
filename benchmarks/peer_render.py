"""``python -m benchmarks render``: zoomq against diffusers on PyTorch and against the machine's limit.

Full-size SD2 models with random weights (speed does not depend on weight values) are prepared
once and cached. Every engine and mode then runs each workload in a fresh process (its own peak
RSS, nothing warm from a neighbour), repetition by repetition, so all modes see the same machine
drift; figures are medians. Ratios are against diffusers bf16 autocast, what a user would run
instead (fp32 on CPUs without bf16); the UNet's achieved GFLOP/s is set against the best large
matrix multiplication the machine runs. Then real workers' start-up, memory and throughput
(``worker_figures``), and the fast tier (``fast_tier``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from benchmarks import fast_tier, render_report, worker_figures
from benchmarks.probe import in_fresh_process
from benchmarks.render_modes import Mode, modes_for
from zoomq.model_prep.bench_models import cached_model
from zoomq.node.bench_report import machine

PARTS = ("main", "fast")  # the modes against diffusers and the machine; the fast tier (fast_tier)

Samples = dict[str, dict[str, list[float]]]  # mode (or "machine") → figure → one value a repetition


def run(out: Path, quick: bool = False, repeats: int | None = None, models_dir: Path | None = None,
        say: Callable[[str], None] = print, tiny: bool = False, only: str | None = None) -> dict:
    """Measure every mode and the fast tier (``only``: one of ``PARTS``), write their report
    sections and plot; ``tiny`` runs the miniature models (checks the harness in minutes; its
    figures mean nothing). Returns the figures by part."""
    from zoomq.config import settings
    from zoomq.render import precision

    repeats = repeats or (1 if quick else 3)
    models_dir = models_dir or settings().cache_dir / "bench-models"
    auto = precision.resolve(replace(settings(), inference_precision="auto"))
    say(f"auto precision on this machine: {auto}")
    result = {}
    if only in (None, "main"):
        result["main"] = run_main(out, quick, repeats, models_dir, auto, say, tiny)
    if only in (None, "fast"):
        result["fast"] = fast_tier.run(out, models_dir, repeats, auto, say, tiny=tiny, quick=quick)
    return result


def run_main(out: Path, quick: bool, repeats: int, models_dir: Path, auto: str, say: Callable[[str], None],
             tiny: bool) -> dict:
    """The modes against diffusers and the machine's limit, then the worker figures; writes the
    ``render`` section, its plot and bench-render.json."""
    from zoomq.config import settings

    started = time.monotonic()
    steps = 5 if quick else 20
    sizes = [512] if quick else [512, 768]
    modes, reference = modes_for(auto)
    # 1. the models: text-to-image and inpainting, in every weight format a mode runs
    models = {(task, w): cached_model(models_dir, task, full=not tiny, weights=w, say=say)
              for task in ("t2i", "inpaint") for w in dict.fromkeys(m.weights for m in modes)}
    # 2. every mode's workloads, repetition by repetition
    samples: Samples = {m.name: {} for m in modes}
    samples["machine"] = {}
    aliases: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="zoomq-bench-ov-cache-") as caches:
        for rep in range(repeats):
            say(f"repetition {rep + 1} of {repeats}")
            # The miniature run's matmul is small too: it checks the probe, its figure means nothing.
            matmul = {"engine": "matmul", "bf16": auto == "bf16", **({"n": 1024} if tiny else {})}
            _keep(samples["machine"], in_fresh_process(matmul))
            _repetition(modes, models, auto, steps, sizes, Path(caches), samples, aliases, say)
    # 3. real worker processes
    say("worker: start-up, peak RSS and concurrency, with real worker processes")
    workers = worker_figures.measure(models[("t2i", "fp16")], settings().cache_dir, say, quick=quick)
    # 4. the figures, kept before the report is written (so they survive a report that fails)
    medians = {name: {k: statistics.median(v) for k, v in figs.items()} for name, figs in samples.items()}
    result = {"repeats": repeats, "steps": steps, "sizes": sizes, "medians": medians, "samples": samples,
              "machine": machine(), "models": "miniature" if tiny else "full-size", "auto_precision": auto,
              "aliases": aliases, "worker": workers,
              "modes": [m.name for m in modes], "reference": reference, "seconds": time.monotonic() - started}
    render_report.write_json(out, result)
    render_report.write(out, result, quick)
    return result


def _repetition(modes: tuple[Mode, ...], models: dict[tuple[str, str], Path], auto: str, steps: int,
                sizes: list[int], caches: Path, samples: Samples, aliases: dict[str, str],
                say: Callable[[str], None]) -> None:
    """Every mode's workloads once, each in a fresh process; a configuration already measured in
    this repetition (the default mode when ``auto`` chose f32) is measured once and aliased."""
    measured: dict[str, tuple[str, dict]] = {}
    for mode in modes:
        for work in mode.works:
            spec = _spec(mode, work, models, auto, steps, sizes, caches)
            same = json.dumps({k: v for k, v in spec.items() if k != "cache_dir"}, sort_keys=True)
            if same in measured:
                aliases[mode.name], figures = measured[same][0], dict(measured[same][1])
                say(f"  {mode.name}: {work} (the same configuration as {aliases[mode.name]})")
            else:
                say(f"  {mode.name}: {work}")
                figures = in_fresh_process(spec)
                measured[same] = (mode.name, dict(figures))
            _keep(samples[mode.name], _named(figures, mode, work))


def _spec(mode: Mode, work: str, models: dict[tuple[str, str], Path], auto: str, steps: int, sizes: list[int],
          caches: Path) -> dict:
    """The probe's spec of ``mode`` running ``work``."""
    task = "inpaint" if work == "keyframe" else "t2i"
    return {"engine": mode.engine, "precision": auto if mode.precision == "auto" else mode.precision,
            "work": work, "steps": steps, "sizes": sizes, "model": str(models[(task, mode.weights)]),
            "guidance_cutoff": mode.guidance_cutoff,
            # One compile cache per mode and model: the first repetition compiles cold.
            "cache_dir": str(caches / f"{mode.name}-{task}".replace(" ", "_"))}


def _named(figures: dict, mode: Mode, work: str) -> dict:
    """The probe's figures as the report names them: zoomq's UNet compile and cached load, and the
    peak RSS by workload; the per-size compiles left out."""
    figures = dict(figures)
    if work == "unet" and mode.engine == "zoomq":
        figures["compile"] = figures.pop("unet_compile_512")
        figures["load_cached"] = figures.pop("unet_cache_load")
        figures.pop("unet_cache_store")
    figures[f"peak_rss_{work}"] = figures.pop("peak_rss")
    return {k: v for k, v in figures.items() if not k.startswith("unet_compile")}


def _keep(samples: dict[str, list[float]], figures: dict) -> None:
    for k, v in figures.items():
        samples.setdefault(k, []).append(v)
