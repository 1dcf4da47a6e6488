"""``python -m benchmarks deepcache``: what DeepCache's feature caching gains on this CPU.

Measured on full-size random-weight SD2 models (speed does not depend on weight values), every
figure in a fresh process of its own (``probe``'s ``deepcache``): the shallow branch's share of a
UNet call (batch 2, 512 px, in OpenVINO), then a whole 512 px text-to-image render and a zoom
keyframe at ``--cache-interval`` 1 (the default mode), 2, 3 and 5. Ratios are against interval 1
measured in the same run, repetition by repetition so every interval sees the same machine drift;
figures are medians.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

from benchmarks.probe import in_fresh_process
from zoomq.model_prep.bench_models import cached_model
from zoomq.node.bench_report import machine, write_section

INTERVALS = (1, 2, 3, 5)
GOAL = 1.4  # at interval 3, whole text-to-image render against the default mode
BRANCH = 0
SHARE = ("unet_full", "unet_shallow", "shallow_share")  # the figures of the shallow branch's share


def run(out: Path, *, tiny: bool = False, repeats: int = 1, steps: int | None = None,
        models_dir: Path | None = None, say: Callable[[str], None] = print) -> dict:
    """Measure and write the ``deepcache`` section of ``out`` and bench-deepcache.json beside it;
    ``tiny``: the miniature models at their native size (checks the benchmark itself; its figures
    mean nothing). Returns the figures."""
    from zoomq.config import settings
    from zoomq.render import precision

    models_dir = models_dir or settings().cache_dir / "bench-models"
    models = {task: cached_model(models_dir, task, full=not tiny, say=say) for task in ("t2i", "inpaint")}
    auto = precision.resolve(replace(settings(), inference_precision="auto"))
    size = 256 if tiny else 512
    steps = steps or (4 if tiny else 20)
    base = {"probe": "deepcache", "engine": "zoomq", "precision": auto, "cache_dir": str(settings().cache_dir),
            "size": size, "branch": BRANCH, "steps": steps}
    say(f"DeepCache at {size} px, {steps} steps, branch {BRANCH}, {auto}; {repeats} repetition(s)")
    runs: dict[str, list[float]] = {}
    for r in range(repeats):
        _repetition(base, models, f"[{r + 1}/{repeats}]", runs, say)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {"date": date.today().isoformat(), "tiny": tiny, "repeats": repeats, "steps": steps, "size": size,
              "precision": auto, "branch": BRANCH, "medians": medians, "runs": runs}
    _report(out, result)
    (Path(out).parent / "bench-deepcache.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _repetition(base: dict, models: dict[str, Path], label: str, runs: dict[str, list[float]],
                say: Callable[[str], None]) -> None:
    """The shallow share, then each render at each interval, once, into ``runs``."""
    share = in_fresh_process({**base, "work": "share", "model": str(models["t2i"])})
    for key in SHARE:
        runs.setdefault(key, []).append(share[key])
    say(f"{label} shallow branch {share['unet_shallow']:.3f} s of the UNet's "
        f"{share['unet_full']:.3f} s ({100 * share['shallow_share']:.0f} %)")
    for work, task in (("t2i", "t2i"), ("keyframe", "inpaint")):
        for interval in INTERVALS:
            figures = in_fresh_process({**base, "work": work, "interval": interval, "model": str(models[task])})
            runs.setdefault(f"{work}_{interval}", []).append(figures[work])
            say(f"{label} {work} at interval {interval}: {figures[work]:.2f} s")


def bound(share: float, interval: int) -> float:
    """The most caching can gain on the UNet alone: one full call and N - 1 shallow ones per N."""
    return interval / (1 + (interval - 1) * share)


def ratio(medians: dict, work: str, interval: int) -> float:
    """How much faster ``work`` ran at ``interval`` than at 1."""
    return medians[f"{work}_1"] / medians[f"{work}_{interval}"]


def _report(out: Path, result: dict) -> None:
    """The ``deepcache`` section of ``out``: the shallow share, the renders by interval, the goal."""
    m, share = result["medians"], result["medians"]["shallow_share"]
    rows = ["| work | " + " | ".join(f"interval {n}" for n in INTERVALS) + " |",
            "|---|" + "---|" * len(INTERVALS)]
    size_steps = f"{result['size']} px, {result['steps']} steps"
    for work, label in (("t2i", f"text-to-image, {size_steps}"),
                        ("keyframe", f"zoom keyframe (inpainting model), {size_steps}")):
        cells = [f"{m[f'{work}_{n}']:.2f} s ({ratio(m, work, n):.2f}×)" for n in INTERVALS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append("| bound from the shallow share (UNet only) | "
                + " | ".join(f"{bound(share, n):.2f}×" for n in INTERVALS) + " |")
    reached = ratio(m, "t2i", 3)
    verdict = "reached" if reached >= GOAL else "not reached"
    note = ("\n\n**Miniature models: these figures check the benchmark itself, not DeepCache's speed.**"
            if result["tiny"] else "")
    body = f"""## DeepCache (`--cache-interval N`)

Measured {result['date']} on {machine()}, {result['precision']}, branch {result['branch']} (DeepCache's default:
the whole UNet every N-th step, in between only `conv_in`, the last up block's last ResNet and transformer and
`conv_out`, on the kept deep feature). Each figure comes from a fresh process; medians of {result['repeats']}
repetition(s); ratios are against interval 1, the default mode, measured in the same run.

Shallow branch: {m['unet_shallow']:.3f} s of the whole UNet's {m['unet_full']:.3f} s per call at batch 2,
{result['size']} px: **{100 * share:.0f} %** of the UNet call in OpenVINO.

{chr(10).join(rows)}

Goal: at least {GOAL}× faster at interval 3 on text-to-image: {reached:.2f}×, {verdict}.
Rerun: `python -m benchmarks deepcache` (full-size models, cached in `$ZOOMQ_CACHE_DIR/bench-models`).{note}
"""
    write_section(out, "deepcache", body)

