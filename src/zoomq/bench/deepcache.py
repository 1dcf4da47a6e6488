"""``zoomq bench deepcache``: what DeepCache's feature caching gains on this CPU.

Measured on full-size random-weight SD2 models (speed does not depend on weight values), every
figure in a fresh process of its own (``python -m zoomq.bench.deepcache SPEC``, like
``bench.probe``): the shallow branch's share of a UNet call (batch 2, 512 px, in OpenVINO), then a
whole 512 px text-to-image render and a zoom keyframe at ``--cache-interval`` 1 (the default
mode), 2, 3 and 5. Ratios are against interval 1 measured in the same run, repetition by
repetition so every interval sees the same machine drift; figures are medians.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

INTERVALS = (1, 2, 3, 5)
GOAL = 1.4  # at interval 3, whole text-to-image render against the default mode
BRANCH = 0
TEXT_LEN = 77


# -- one measurement, in its own process ---------------------------------------------------------

def _share(renderer, size: int, branch: int, repeats: int = 3) -> dict:
    """Seconds of one full UNet call and one shallow-branch call at batch 2, best of ``repeats``."""
    from zoomq.bench.probe import best_seconds
    from zoomq.model.manifest import feature_output_name, shallow_part_name

    channels = renderer.kind["unet_in_channels"]
    text = renderer.encode_text("")
    latent = size // renderer.latent_factor
    rng = np.random.default_rng(1234)
    inputs = {"sample": rng.standard_normal([2, channels, latent, latent], dtype=np.float32),
              "timestep": np.array(500.0, dtype=np.float32),
              "encoder_hidden_states": np.concatenate([text, text]).astype(np.float32)}
    _, feature = renderer.parts.run_outputs("unet", (feature_output_name(branch),), **inputs)  # compiles too

    full = best_seconds(lambda: renderer.parts.run("unet", **inputs), repeats)
    shallow = best_seconds(lambda: renderer.parts.run(shallow_part_name(branch), **inputs, feature=feature), repeats)
    return {"unet_full": full, "unet_shallow": shallow, "shallow_share": shallow / full}


def probe(spec: dict) -> dict:
    """One measurement: ``work`` is ``share``, ``t2i`` or ``keyframe`` (at ``interval``)."""
    from zoomq.bench.probe import GUIDANCE, NEGATIVE, PROMPT, SEED, _keyframe_inputs
    from zoomq.config import settings
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    s = replace(settings(), inference_precision=spec["precision"], cache_dir=Path(spec["cache_dir"]))
    renderer = Renderer(spec["model"], s)
    size = spec["size"]
    if spec["work"] == "share":
        return _share(renderer, size, spec["branch"])
    request = RenderRequest(PROMPT, negative_prompt=NEGATIVE, steps=spec["steps"], guidance=GUIDANCE, seed=SEED,
                            width=size, height=size, cache_interval=spec["interval"], cache_branch=spec["branch"])
    if spec["work"] == "keyframe":
        canvas, mask = _keyframe_inputs(size, size // 4)
        request = replace(request, init_image=canvas, mask=mask, strength=1.0)
    renderer.render(replace(request, steps=2))  # warm-up: compiles the full and the shallow UNet
    t0 = time.perf_counter()
    renderer.render(request)
    return {spec["work"]: time.perf_counter() - t0}


# -- the benchmark -------------------------------------------------------------------------------

def run(out: Path, *, tiny: bool = False, repeats: int = 1, steps: int | None = None,
        models_dir: Path | None = None, say: Callable[[str], None] = print) -> dict:
    """Measure and write the ``deepcache`` section of ``out``; ``tiny``: the miniature models at
    their native size (checks the benchmark itself; its figures mean nothing). Returns the figures."""
    from zoomq.bench.render import _probe, prepare_models
    from zoomq.config import settings
    from zoomq.render import precision

    models_dir = models_dir or settings().cache_dir / "bench-models"
    models = prepare_models(models_dir, ("fp16",), say, full=not tiny)
    auto = precision.resolve(replace(settings(), inference_precision="auto"))
    size = 256 if tiny else 512
    steps = steps or (4 if tiny else 20)
    base = {"engine": "zoomq", "precision": auto, "cache_dir": str(settings().cache_dir), "size": size, "branch": BRANCH,
            "steps": steps}
    say(f"DeepCache at {size} px, {steps} steps, branch {BRANCH}, {auto}; {repeats} repetition(s)")
    runs: dict[str, list[float]] = {}

    def keep(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    for r in range(repeats):
        share = _probe({**base, "work": "share", "model": str(models[("t2i", "fp16")])}, module=__name__)
        for key, value in share.items():
            keep(key, value)
        say(f"[{r + 1}/{repeats}] shallow branch {share['unet_shallow']:.3f} s of the UNet's "
            f"{share['unet_full']:.3f} s ({100 * share['shallow_share']:.0f} %)")
        for work, task in (("t2i", "t2i"), ("keyframe", "inpaint")):
            for interval in INTERVALS:
                figures = _probe({**base, "work": work, "interval": interval, "model": str(models[(task, "fp16")])},
                                 module=__name__)
                keep(f"{work}_{interval}", figures[work])
                say(f"[{r + 1}/{repeats}] {work} at interval {interval}: {figures[work]:.2f} s")
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {"date": date.today().isoformat(), "tiny": tiny, "repeats": repeats, "steps": steps, "size": size,
              "precision": auto, "branch": BRANCH, "medians": medians, "runs": runs}
    _report(out, result)
    (Path(out).parent / "bench-deepcache.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def bound(share: float, interval: int) -> float:
    """The most caching can gain on the UNet alone: one full call and N - 1 shallow ones per N."""
    return interval / (1 + (interval - 1) * share)


def ratio(medians: dict, work: str, interval: int) -> float:
    return medians[f"{work}_1"] / medians[f"{work}_{interval}"]


def _report(out: Path, result: dict) -> None:
    from zoomq.bench.report import machine, write_section

    m, share = result["medians"], result["medians"]["shallow_share"]
    rows = ["| work | " + " | ".join(f"interval {n}" for n in INTERVALS) + " |",
            "|---|" + "---|" * len(INTERVALS)]
    for work, label in (("t2i", f"text-to-image, {result['size']} px, {result['steps']} steps"),
                        ("keyframe", f"zoom keyframe (inpainting model), {result['size']} px, {result['steps']} steps")):
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
Rerun: `zoomq bench deepcache` (full-size models, cached in `$ZOOMQ_CACHE_DIR/bench-models`).{note}
"""
    write_section(out, "deepcache", body)


if __name__ == "__main__":
    from zoomq.bench.probe import main

    sys.exit(main(sys.argv, probe))
