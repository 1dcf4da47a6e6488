"""One measurement of the fast tier (``zoomq bench render``), in a process of its own.

``python -m zoomq.bench.fast_probe SPEC`` renders SD-Turbo's workloads with zoomq or with diffusers
(bf16 autocast) and prints ``ZOOMQ-PROBE {...}``: the whole render's seconds (a median over a few
renders, each with a prompt of its own so the text encoder runs every time, as for a new request)
and the seconds of its parts — text encoder, UNet, decoder — so what is left is visible too.

Workloads at ``size`` px: ``image`` (text-to-image, ``decoder`` full or tiny) and ``keyframe`` (a
zoom keyframe outpainted by the text-to-image model: diffusers' inpainting pipeline on a 4-channel
UNet).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

from zoomq.bench.probe import PROMPT, SEED, _keyframe_inputs, _peak_rss

PARTS = ("text", "unet", "decoder")


class _Clock:
    """Seconds spent in each part during one render."""

    def __init__(self):
        self.spent: dict[str, float] = defaultdict(float)

    def timed(self, part: str, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - t0
        return call


def _figures(render: float, png: float, clock: _Clock) -> dict:
    """One render's figures; ``rest`` (outside the networks) per render, so its median is a real one."""
    parts = {p: clock.spent.get(p, 0.0) for p in (*PARTS, "encoder")}
    return {"render": render, "png": png, **parts, "rest": render - sum(parts.values())}


def _medians(runs: list[dict]) -> dict:
    return {key: statistics.median(r.get(key, 0.0) for r in runs) for key in runs[0]}


def _zoomq(spec: dict) -> dict:
    from dataclasses import replace

    from zoomq.config import settings
    from zoomq.render import png
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    s = replace(settings(), inference_precision=spec["precision"], cache_dir=Path(spec["cache_dir"]))
    start = time.perf_counter()
    renderer = Renderer(spec["model"], s)
    clock = _Clock()
    part_of = {"text_encoder": "text", "unet": "unet", "vae_decoder": "decoder", "tiny_vae_decoder": "decoder",
               "vae_encoder": "encoder"}
    run = renderer.parts.run
    renderer.parts.run = lambda part, **inputs: clock.timed(part_of.get(part, part), run)(part, **inputs)
    keyframe, size = spec["work"] == "keyframe", spec["size"]
    canvas, mask = _keyframe_inputs(size, size // 4) if keyframe else (None, None)

    def request(prompt: str) -> RenderRequest:
        return RenderRequest(prompt, steps=spec["steps"], guidance=0.0, seed=SEED, width=size, height=size,
                             decoder=spec["decoder"], init_image=canvas, mask=mask,
                             strength=1.0 if keyframe else None)

    renderer.render(request("warm-up"), latent_blend=keyframe)
    first = time.perf_counter() - start
    runs = []
    for r in range(spec.get("repeats", 5)):
        clock.spent.clear()
        t0 = time.perf_counter()
        result = renderer.render(request(f"{PROMPT}, take {r}"), latent_blend=keyframe)
        rendered = time.perf_counter()
        png.encode(result.image, result.recipe)
        runs.append(_figures(rendered - t0, time.perf_counter() - rendered, clock))
    return {"first_render": first, **_medians(runs)}


def _diffusers(spec: dict) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16" else nullcontext()
    folder = Path(spec["model"]) / "diffusers"
    keyframe, size = spec["work"] == "keyframe", spec["size"]
    start = time.perf_counter()
    cls = diffusers.StableDiffusionInpaintPipeline if keyframe else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    if spec["decoder"] == "tiny":
        pipe.vae = diffusers.AutoencoderTiny.from_pretrained(folder / "tiny_autoencoder", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    clock = _Clock()
    pipe.text_encoder.forward = clock.timed("text", pipe.text_encoder.forward)
    pipe.unet.forward = clock.timed("unet", pipe.unet.forward)
    pipe.vae.decode = clock.timed("decoder", pipe.vae.decode)
    pipe.vae.encode = clock.timed("encoder", pipe.vae.encode)
    kwargs = dict(guidance_scale=0.0, height=size, width=size, num_inference_steps=spec["steps"])
    if keyframe:
        canvas, mask = _keyframe_inputs(size, size // 4)
        kwargs.update(image=canvas, mask_image=mask, strength=1.0)
    runs = []
    with torch.inference_mode(), autocast:
        pipe("warm-up", **kwargs, generator=torch.Generator().manual_seed(SEED))
        first = time.perf_counter() - start
        for r in range(spec.get("repeats", 5)):
            clock.spent.clear()
            t0 = time.perf_counter()
            image = pipe(f"{PROMPT}, take {r}", **kwargs, generator=torch.Generator().manual_seed(SEED)).images[0]
            rendered = time.perf_counter()
            image.save(io.BytesIO(), format="PNG")
            runs.append(_figures(rendered - t0, time.perf_counter() - rendered, clock))
    return {"first_render": first, **_medians(runs)}


def run(spec: dict) -> dict:
    out = _zoomq(spec) if spec["engine"] == "zoomq" else _diffusers(spec)
    out["peak_rss"] = _peak_rss()
    return out


if __name__ == "__main__":
    from zoomq.bench.probe import main

    sys.exit(main(sys.argv, run))
