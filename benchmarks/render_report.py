"""The render benchmark's report: its section of docs/benchmarks.md, the plot beside it, the raw figures."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from benchmarks.render_modes import MODES, REFERENCE, UNET_GFLOP, Mode
from zoomq.node.bench_report import write_section

GIB = 2**30
TARGETS = (
    # (what, mode, figure, limit as a ratio to the reference)
    ("UNet step 512, default mode", "zoomq default", "unet_512", 0.60),
    ("whole 512 text-to-image, default mode", "zoomq default", "t2i_512", 0.65),
    ("whole 512 text-to-image, fastest mode", "zoomq fast", "t2i_512", 0.40),
)
PEAK_SHARE = 0.8  # the UNet's GFLOP/s in the default mode, as a share of the matmul peak
FIRST_STEP_S = 5  # a worker's launch to the start of its first step (issue 27)
WORKER_RSS_GIB = 4  # a worker's peak RSS holding the 512 text-to-image model


def write_json(out: Path, result: dict) -> None:
    """The raw figures, as bench-render.json beside ``out``."""
    (out.parent / "bench-render.json").write_text(json.dumps(result, indent=1) + "\n")


def write(out: Path, result: dict, quick: bool) -> None:
    """The ``render`` section of ``out``, with its plot as bench-render.png beside it."""
    reference = result.get("reference", REFERENCE)
    ran = [m for m in MODES if m.name in result.get("modes", [m.name for m in MODES])]
    plot = out.parent / "bench-render.png"
    _plot(plot, result["medians"], ran, reference)
    body = "\n".join([
        "## Rendering (`python -m benchmarks render`)",
        "",
        *_intro(result, reference, quick),
        "",
        *_mode_rows(result, ran, reference),
        "",
        f"Machine limit: a 4096² matrix multiplication runs at {_matmuls(result['medians']['machine'])}; the best, "
        f"{result['medians']['machine']['matmul_peak']:.0f} GFLOP/s, is the peak the UNet is measured against.",
        "",
        "| target | limit | measured | |",
        "|---|---|---|---|",
        *_target_rows(result, reference),
        "",
        _modes_note(result, ran),
        "",
        f"![render benchmark]({plot.name})",
        "",
        "Worker: real `zoomq worker` processes on a private redis-server, the text-to-image model, "
        f"default settings, 512 px jobs of {result['worker']['steps']} steps; start-up is timed from launching "
        "the worker with a job already queued.",
        "",
        *_worker_rows(result["worker"]),
        "",
        f"Rerun: `python -m benchmarks render --only main` (this part took {result['seconds'] / 60:.0f} min; "
        "`--quick`: one repetition, 5 steps, 512 px only). Models are cached in `$ZOOMQ_CACHE_DIR/bench-models`.",
    ])
    write_section(out, "render", body)
    write_json(out, result)


# -- the figures ----------------------------------------------------------------------------------

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


# -- the report's parts ---------------------------------------------------------------------------

def _intro(result: dict, reference: str, quick: bool) -> list[str]:
    miniature = result["models"] == "miniature"
    return [
        *(["**Miniature models: these figures check the benchmark itself and mean nothing.**", ""]
          if miniature else []),
        f"Measured {date.today().isoformat()} on {result['machine']} with `python -m benchmarks render"
        f"{' --quick' if quick else ''}`: {result['models']} SD2 models with random weights, every mode in a fresh "
        f"process, {result['repeats']} interleaved repetition(s), medians. Ratios in brackets are against "
        f"{reference}{' (torch.autocast)' if reference == REFERENCE else ''}"
        + ("" if reference == REFERENCE else ": this CPU has no bf16 arithmetic, where PyTorch's bf16 autocast "
           "measured 160× slower than its f32, so diffusers bf16 was not run and the targets are set against fp32")
        + ". UNet steps are batch 2 (guidance); GFLOP/s counts "
        f"{UNET_GFLOP[512]} GFLOP per batch-1 pass at 512 px. Peak RSS is the text-to-image process's. "
        "Compile is the UNet's at 512 px from the prepared model, as zoomq does by default on CPU; "
        "cached load is the same compile answered from OpenVINO's compile cache (`ZOOMQ_COMPILE_CACHE=on`).",
    ]


def _mode_rows(result: dict, ran: list[Mode], reference: str) -> list[str]:
    """The table of modes: each workload's seconds with its ratio to ``reference``, the UNet's
    GFLOP/s, peak RSS, compile."""
    medians = result["medians"]
    peak = medians["machine"]["matmul_peak"]

    def cell(mode: str, key: str, fmt: str = "{:.2f}") -> str:
        value = medians[mode].get(key)
        if value is None:
            return "–"
        ratio = _ratio(medians, mode, key, reference)
        return fmt.format(value) + (f" ({ratio:.2f}×)" if ratio is not None else "")

    rows = ["| mode | UNet step 512 s | UNet step 768 s | UNet GFLOP/s (% of peak) | "
            f"text-to-image 512, {result['steps']} steps, s | zoom keyframe 512 s | peak RSS GiB | "
            "UNet compile / cached load s |",
            "|---|---|---|---|---|---|---|---|"]
    for mode in ran:
        m = medians[mode.name]
        g = _gflops(medians, mode.name, 512)
        rss = m.get("peak_rss_t2i")
        compile_ = f"{m['compile']:.1f} / {m['load_cached']:.1f}" if "compile" in m else "–"
        rss_text = f"{rss / GIB:.2f}" if rss else "–"
        g_text = f"{g:.0f} ({100 * g / peak:.0f} %)" if g else "–"
        rows.append(f"| {mode.name} | {cell(mode.name, 'unet_512')} | {cell(mode.name, 'unet_768')} | {g_text} | "
                    f"{cell(mode.name, 't2i_512', '{:.1f}')} | {cell(mode.name, 'keyframe_512', '{:.1f}')} | "
                    f"{rss_text} | {compile_} |")
    return rows


def _target_rows(result: dict, reference: str) -> list[str]:
    """One row a target: its limit, the figure measured, met or not."""
    medians, w = result["medians"], result["worker"]
    peak = medians["machine"]["matmul_peak"]
    rows = []
    for what, mode, key, limit in TARGETS:
        ratio = _ratio(medians, mode, key, reference)
        verdict = "met" if ratio is not None and ratio <= limit else "NOT met"
        rows.append(f"| {what} | ≤ {limit:.2f}× | {ratio:.2f}× | {verdict} |" if ratio is not None else
                    f"| {what} | ≤ {limit:.2f}× | – | not measured |")
    g = _gflops(medians, "zoomq default", 512)
    share = f"{100 * PEAK_SHARE:.0f} %"
    rows.append(f"| UNet at ≥ {share} of the matmul peak, default mode | ≥ {share} | {100 * g / peak:.0f} % | "
                f"{'met' if g >= PEAK_SHARE * peak else 'NOT met'} |" if g else
                f"| UNet at ≥ {share} of peak | – | – | – |")
    start = w["denoise_start"]
    rows.append(f"| worker: first step begins ≤ {FIRST_STEP_S} s after launch (default settings, compile cache "
                f"warm) | ≤ {FIRST_STEP_S} s | {start:.1f} s | {'met' if start <= FIRST_STEP_S else 'NOT met'} |")
    rss = w["worker_peak_rss"]
    rows.append(f"| worker: peak RSS holding the 512 text-to-image model | ≤ {WORKER_RSS_GIB} GiB | "
                f"{rss / GIB:.2f} GiB | {'met' if rss <= WORKER_RSS_GIB * GIB else 'NOT met'} |")
    return rows


def _modes_note(result: dict, ran: list[Mode]) -> str:
    """What each mode is, what ``auto`` chose, and which modes were one configuration."""
    return ("Modes: " + "; ".join(f"**{m.name}**: {m.note}" for m in ran if m.note) + ". "
            f"On this machine `auto` measured **{result['auto_precision']}** as the faster precision, so the "
            "default and fast modes ran at it"
            + "".join(f"; {a} is the same configuration as {b}, measured once"
                      for a, b in result.get("aliases", {}).items())
            + ".")


def _worker_rows(w: dict) -> list[str]:
    """The worker figures: start-up, its parts, the step, memory and throughput."""
    cpus = os.cpu_count() or 1
    gain = w["jobs_per_min_2"] / w["jobs_per_min_1"]
    return [
        "| worker figure | measured |",
        "|---|---|",
        f"| launch to the start / end of the first step, default settings, compile cache warm | "
        f"{w['denoise_start']:.1f} s / {w['first_step']:.1f} s |",
        f"| the same, cold (compile cache off) | {w['denoise_start_cold']:.1f} s / {w['first_step_cold']:.1f} s |",
        f"| launch to the end of the first step, default settings, the compile cache storing its blobs | "
        f"{w['first_step_cache_store']:.1f} s |",
        *([f"| of which, at once in two threads: importing the render core / compiling the model, warm | "
           f"{w['warmup_import']:.1f} s / {w['warmup_compile']:.1f} s |"] if "warmup_compile" in w else []),
        *([f"| the same, cold | {w['warmup_import_cold']:.1f} s / "
           f"{w['warmup_compile_cold']:.1f} s |"] if "warmup_compile_cold" in w else []),
        f"| the job's mean step (from a job queued before the worker started) | {w['seconds_per_step']:.1f} s |",
        f"| peak RSS of the render process, whole 512 px job: compile cache warm / cold | "
        f"{w['worker_peak_rss'] / GIB:.2f} GiB / {w['worker_peak_rss_cold'] / GIB:.2f} GiB |",
        f"| peak private memory, default (RSS less the model files' shared page cache) | "
        f"{w['worker_peak_private'] / GIB:.2f} GiB |",
        f"| throughput, 1 process × {cpus} threads | {w['jobs_per_min_1']:.2f} jobs/min |",
        f"| throughput, 2 processes × {max(1, cpus // 2)} thread(s) | {w['jobs_per_min_2']:.2f} jobs/min "
        f"({gain:.2f}×) |",
    ]


def _plot(path: Path, medians: dict, modes: list[Mode], reference: str) -> None:
    """Bars of each mode's time relative to ``reference``: UNet step, text-to-image, keyframe."""
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
