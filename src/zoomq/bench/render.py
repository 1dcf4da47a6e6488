"""``zoomq bench render``: zoomq against diffusers on PyTorch and against the machine's limit.

Full-size SD2 models with random weights (speed does not depend on weight values) are prepared
once and cached. Every engine and mode then runs each workload in a fresh process (its own peak
RSS, nothing warm from a neighbour), repetition by repetition, so all modes see the same machine
drift; figures are medians. Ratios are against diffusers bf16 autocast, what a user would run
instead (fp32 on CPUs without bf16); the UNet's achieved GFLOP/s is set against the best large
matrix multiplication the machine runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from zoomq.bench import worker as worker_bench
from zoomq.bench.report import machine, write_section

UNET_GFLOP = {512: 804, 768: 2149}  # one batch-1 pass (DESIGN.md)
REFERENCE = "diffusers bf16"


@dataclass(frozen=True)
class Mode:
    name: str
    engine: str  # diffusers | zoomq
    precision: str  # diffusers: fp32 | bf16; zoomq: f32 | bf16 | auto
    weights: str = "fp16"  # zoomq model: fp16 | int8-hybrid
    guidance_cutoff: float = 1.0
    works: tuple[str, ...] = ("unet", "t2i", "keyframe")
    note: str = ""


MODES = (
    Mode("diffusers fp32", "diffusers", "fp32"),
    Mode(REFERENCE, "diffusers", "bf16", note="the reference: torch.autocast(bfloat16)"),
    Mode("zoomq f32", "zoomq", "f32", note="exact: parity with diffusers at f32"),
    Mode("zoomq default", "zoomq", "auto", note="bf16 on CPUs with AVX-512 BF16 or AMX; the picture moves by bf16 rounding only"),
    Mode("zoomq int8-hybrid", "zoomq", "auto", weights="int8-hybrid",
         note="`zoomq prepare --weights int8-hybrid`"),
    Mode("zoomq guidance 0.4", "zoomq", "auto", guidance_cutoff=0.4, works=("t2i", "keyframe"),
         note="`--guidance-cutoff 0.4`: guidance for the first 40 % of the steps, as in diffusers' own "
              "example of ending it early (the UNet step is the default's)"),
    Mode("zoomq fast", "zoomq", "auto", weights="int8-hybrid", guidance_cutoff=0.4, works=("t2i", "keyframe"),
         note="int8-hybrid + `--guidance-cutoff 0.4`"),
)


def modes_for(auto: str) -> tuple[tuple[Mode, ...], str]:
    """The modes worth running on this CPU, and the one the others are set against: diffusers bf16
    where the CPU computes bf16 (``auto`` chose it), else diffusers fp32 — without AVX-512 BF16 or
    AMX, PyTorch's bf16 convolutions measured 160× slower than its f32 (an AVX2 EPYC), a mode no
    user would run and one that would take hours."""
    if auto == "bf16":
        return MODES, REFERENCE
    return tuple(m for m in MODES if not (m.engine == "diffusers" and m.precision == "bf16")), "diffusers fp32"


def prepare_models(folder: Path, weights: tuple[str, ...], say: Callable[[str], None],
                   full: bool = True) -> dict[tuple[str, str], Path]:
    """(task, weights) → prepared random-weight model, built once into ``folder``."""
    from zoomq.model_prep.prepare import prepare_random

    models = {}
    label = "full" if full else "tiny"
    for task in ("t2i", "inpaint"):
        for w in weights:
            out = folder / (f"{label}-{task}" if w == "fp16" else f"{label}-{task}-{w}")
            say(f"preparing the {label} {task} model ({w} weights) in {out}")
            models[(task, w)] = prepare_random(out, full=full, inpainting=task == "inpaint", weights=w,
                                               report=lambda m: say("  " + m)).folder
    return models


def _probe(spec: dict, module: str = "zoomq.bench.probe") -> dict:
    """Run one measurement process (``module``'s main); returns its figures."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("ZOOMQ-PROBE "):
            return json.loads(line[len("ZOOMQ-PROBE "):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"probe {spec['engine']}/{spec.get('work')} failed (exit {proc.returncode}):\n{tail}")


PARTS = ("main", "fast")  # the modes against diffusers and the machine; the fast tier (bench.fast_tier)


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
        result["main"] = _run_main(out, quick, repeats, models_dir, auto, say, tiny)
    if only in (None, "fast"):
        from zoomq.bench import fast_tier

        result["fast"] = fast_tier.run(out, _probe, models_dir, repeats, auto, say, tiny=tiny, quick=quick)
    return result


def _run_main(out: Path, quick: bool, repeats: int, models_dir: Path, auto: str, say: Callable[[str], None],
              tiny: bool) -> dict:
    from zoomq.config import settings

    started = time.monotonic()
    steps = 5 if quick else 20
    sizes = [512] if quick else [512, 768]
    modes, reference = modes_for(auto)
    models = prepare_models(models_dir, tuple(dict.fromkeys(m.weights for m in modes)), say, full=not tiny)
    samples: dict[str, dict[str, list[float]]] = {m.name: {} for m in modes}
    samples["machine"] = {}
    aliases: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="zoomq-bench-ov-cache-") as caches:
        for rep in range(repeats):
            say(f"repetition {rep + 1} of {repeats}")
            figures = _probe({"engine": "matmul", "bf16": auto == "bf16"})
            for k, v in figures.items():
                samples["machine"].setdefault(k, []).append(v)
            measured: dict[str, tuple[str, dict]] = {}  # a configuration measured this repetition
            for mode in modes:
                for work in mode.works:
                    task = "inpaint" if work == "keyframe" else "t2i"
                    spec = {"engine": mode.engine, "precision": auto if mode.precision == "auto" else mode.precision,
                            "work": work, "steps": steps,
                            "sizes": sizes, "model": str(models[(task, mode.weights)]),
                            "guidance_cutoff": mode.guidance_cutoff,
                            # One compile cache per mode and model: the first repetition compiles cold.
                            "cache_dir": str(Path(caches) / f"{mode.name}-{task}".replace(" ", "_"))}
                    same = json.dumps({k: v for k, v in spec.items() if k != "cache_dir"}, sort_keys=True)
                    if same in measured:  # e.g. the default mode when auto chose f32: one configuration
                        aliases[mode.name], figures = measured[same][0], dict(measured[same][1])
                        say(f"  {mode.name}: {work} (the same configuration as {aliases[mode.name]})")
                    else:
                        say(f"  {mode.name}: {work}")
                        figures = _probe(spec)
                        measured[same] = (mode.name, dict(figures))
                    if work == "unet" and mode.engine == "zoomq":
                        figures["compile"] = figures.pop("unet_compile_512")
                        figures["load_cached"] = figures.pop("unet_cache_load")
                        figures.pop("unet_cache_store")
                    figures[f"peak_rss_{work}"] = figures.pop("peak_rss")
                    for k, v in figures.items():
                        if not k.startswith("unet_compile"):
                            samples[mode.name].setdefault(k, []).append(v)
    say("worker: start-up, peak RSS and concurrency, with real worker processes")
    workers = worker_bench.measure(models[("t2i", "fp16")], settings().cache_dir, say, quick=quick)
    medians = {name: {k: statistics.median(v) for k, v in figs.items()} for name, figs in samples.items()}
    result = {"repeats": repeats, "steps": steps, "sizes": sizes, "medians": medians, "samples": samples,
              "machine": machine(), "models": "miniature" if tiny else "full-size", "auto_precision": auto,
              "aliases": aliases, "worker": workers,
              "modes": [m.name for m in modes], "reference": reference, "seconds": time.monotonic() - started}
    (out.parent / "bench-render.json").write_text(json.dumps(result, indent=1) + "\n")  # kept if the report fails
    _report(out, result, quick)
    return result


# -- the report -----------------------------------------------------------------------------------

TARGETS = (
    # (what, mode, figure, limit as a ratio to diffusers bf16, or to the matmul peak)
    ("UNet step 512, default mode", "zoomq default", "unet_512", 0.60),
    ("whole 512 text-to-image, default mode", "zoomq default", "t2i_512", 0.65),
    ("whole 512 text-to-image, fastest mode", "zoomq fast", "t2i_512", 0.40),
)


def _ratio(medians: dict, mode: str, key: str, reference: str = REFERENCE) -> float | None:
    ref = medians[reference].get(key)
    value = medians.get(mode, {}).get(key)
    return value / ref if ref and value else None


def _gflops(medians: dict, mode: str, size: int) -> float | None:
    seconds = medians[mode].get(f"unet_{size}")
    return 2 * UNET_GFLOP[size] / seconds if seconds else None


def _matmuls(machine: dict) -> str:
    """The matmul figures measured, by engine: bf16 only where the CPU computes it."""
    engines = []
    for engine, label in (("openvino", "OpenVINO"), ("torch", "PyTorch")):
        figures = [f"{machine[f'matmul_{engine}_{p}']:.0f} ({p})" for p in ("bf16", "f32")
                   if f"matmul_{engine}_{p}" in machine]
        engines.append(f"{' and '.join(figures)} GFLOP/s in {label}")
    return ", ".join(engines) + ("" if "matmul_torch_bf16" in machine else " (no bf16 on this CPU)")


def _report(out: Path, result: dict, quick: bool) -> None:
    medians, steps = result["medians"], result["steps"]
    reference = result.get("reference", REFERENCE)
    ran = [m for m in MODES if m.name in result.get("modes", [m.name for m in MODES])]
    peak = medians["machine"]["matmul_peak"]
    gib = 2**30

    def cell(mode: str, key: str, fmt: str = "{:.2f}") -> str:
        value = medians[mode].get(key)
        if value is None:
            return "–"
        ratio = _ratio(medians, mode, key, reference)
        return fmt.format(value) + (f" ({ratio:.2f}×)" if ratio is not None else "")

    rows = ["| mode | UNet step 512 s | UNet step 768 s | UNet GFLOP/s (% of peak) | "
            f"text-to-image 512, {steps} steps, s | zoom keyframe 512 s | peak RSS GiB | UNet compile / cached load s |",
            "|---|---|---|---|---|---|---|---|"]
    for mode in ran:
        m = medians[mode.name]
        g = _gflops(medians, mode.name, 512)
        rss = m.get("peak_rss_t2i")
        compile_ = f"{m['compile']:.1f} / {m['load_cached']:.1f}" if "compile" in m else "–"
        rss_text = f"{rss / gib:.2f}" if rss else "–"
        g_text = f"{g:.0f} ({100 * g / peak:.0f} %)" if g else "–"
        rows.append(f"| {mode.name} | {cell(mode.name, 'unet_512')} | {cell(mode.name, 'unet_768')} | {g_text} | "
                    f"{cell(mode.name, 't2i_512', '{:.1f}')} | {cell(mode.name, 'keyframe_512', '{:.1f}')} | "
                    f"{rss_text} | {compile_} |")
    checks = []
    for what, mode, key, limit in TARGETS:
        ratio = _ratio(medians, mode, key, reference)
        verdict = "met" if ratio is not None and ratio <= limit else "NOT met"
        checks.append(f"| {what} | ≤ {limit:.2f}× | {ratio:.2f}× | {verdict} |" if ratio is not None else
                      f"| {what} | ≤ {limit:.2f}× | – | not measured |")
    g = _gflops(medians, "zoomq default", 512)
    checks.append(f"| UNet at ≥ 80 % of the matmul peak, default mode | ≥ 80 % | {100 * g / peak:.0f} % | "
                  f"{'met' if g >= 0.8 * peak else 'NOT met'} |" if g else "| UNet at ≥ 80 % of peak | – | – | – |")
    w = result["worker"]
    best_start = min(w["first_step"], w["first_step_cache_warm"])
    checks.append(f"| worker: first step ≤ 5 s after start (best of compile cache off / warm) | ≤ 5 s | "
                  f"{best_start:.1f} s | {'met' if best_start <= 5 else 'NOT met'} |")
    checks.append(f"| worker: peak RSS holding the 512 text-to-image model | ≤ 4 GiB | {w['worker_peak_rss'] / gib:.2f} GiB | "
                  f"{'met' if w['worker_peak_rss'] <= 4 * gib else 'NOT met'} |")
    gain = w["jobs_per_min_2"] / w["jobs_per_min_1"]
    cpus = os.cpu_count() or 1
    worker_rows = [
        "| worker figure | measured |",
        "|---|---|",
        f"| launch to the end of the first step, default settings | {w['first_step']:.1f} s |",
        f"| the same, compile cache on: launch that stores the blobs / next launch | "
        f"{w['first_step_cache_store']:.1f} s / {w['first_step_cache_warm']:.1f} s |",
        *([f"| of which, at once in two threads: importing the render core / compiling the model, default | "
           f"{w['warmup_import']:.1f} s / {w['warmup_compile']:.1f} s |"] if "warmup_compile" in w else []),
        *([f"| the same, compile cache warm | {w['warmup_import_cached']:.1f} s / {w['warmup_compile_cached']:.1f} s |"]
          if "warmup_compile_cached" in w else []),
        f"| the job's mean step (from a job queued before the worker started) | {w['seconds_per_step']:.1f} s |",
        f"| peak RSS of the render process, whole 512 px job: default / compile cache on | "
        f"{w['worker_peak_rss'] / gib:.2f} GiB / {w['worker_peak_rss_cached'] / gib:.2f} GiB |",
        f"| peak private memory, default (RSS less the model files' shared page cache) | "
        f"{w['worker_peak_private'] / gib:.2f} GiB |",
        f"| throughput, 1 process × {cpus} threads | {w['jobs_per_min_1']:.2f} jobs/min |",
        f"| throughput, 2 processes × {max(1, cpus // 2)} thread(s) | {w['jobs_per_min_2']:.2f} jobs/min ({gain:.2f}×) |",
    ]
    plot = out.parent / "bench-render.png"
    _plot(plot, medians, ran, reference)
    body = "\n".join([
        "## Rendering (`zoomq bench render`)",
        "",
        *(["**Miniature models: these figures check the benchmark itself and mean nothing.**", ""]
          if result["models"] == "miniature" else []),
        f"Measured {date.today().isoformat()} on {result['machine']} with `zoomq bench render"
        f"{' --quick' if quick else ''}`: {result['models']} SD2 models with random weights, every mode in a fresh "
        f"process, {result['repeats']} interleaved repetition(s), medians. Ratios in brackets are against "
        f"{reference}{' (torch.autocast)' if reference == REFERENCE else ''}"
        + ("" if reference == REFERENCE else ": this CPU has no bf16 arithmetic, where PyTorch's bf16 autocast "
           "measured 160× slower than its f32, so diffusers bf16 was not run and the targets are set against fp32")
        + ". UNet steps are batch 2 (guidance); GFLOP/s counts "
        f"{UNET_GFLOP[512]} GFLOP per batch-1 pass at 512 px. Peak RSS is the text-to-image process's. "
        "Compile is the UNet's at 512 px from the prepared model, as zoomq does by default on CPU; "
        "cached load is the same compile answered from OpenVINO's compile cache (`ZOOMQ_COMPILE_CACHE=on`).",
        "",
        *rows,
        "",
        f"Machine limit: a 4096² matrix multiplication runs at {_matmuls(medians['machine'])}; the best, "
        f"{peak:.0f} GFLOP/s, is the peak the UNet is measured against.",
        "",
        "| target | limit | measured | |",
        "|---|---|---|---|",
        *checks,
        "",
        "Modes: " + "; ".join(f"**{m.name}**: {m.note}" for m in ran if m.note) + ". "
        f"On this machine `auto` measured **{result['auto_precision']}** as the faster precision, so the "
        "default and fast modes ran at it"
        + "".join(f"; {a} is the same configuration as {b}, measured once" for a, b in result.get("aliases", {}).items())
        + ".",
        "",
        f"![render benchmark]({plot.name})",
        "",
        f"Worker: real `zoomq worker` processes on a private redis-server, the text-to-image model, "
        f"default settings, 512 px jobs of {w['steps']} steps; start-up is timed from launching the worker with a "
        "job already queued.",
        "",
        *worker_rows,
        "",
        f"Rerun: `zoomq bench render --only main` (this part took {result['seconds'] / 60:.0f} min; `--quick`: one repetition, "
        "5 steps, 512 px only). Models are cached in `$ZOOMQ_CACHE_DIR/bench-models`.",
    ])
    write_section(out, "render", body)
    (out.parent / "bench-render.json").write_text(json.dumps(result, indent=1) + "\n")


def _plot(path: Path, medians: dict, modes: list[Mode], reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m.name for m in modes]
    series = [("UNet step 512", "unet_512"), ("text-to-image 512", "t2i_512"), ("zoom keyframe 512", "keyframe_512")]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.26
    for i, (label, key) in enumerate(series):
        values = [_ratio(medians, n, key, reference) or 0 for n in names]
        ax.barh([y + (i - 1) * width for y in range(len(names))], values, height=width, label=label)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"time relative to {reference} (lower is faster)")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
