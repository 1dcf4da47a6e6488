"""One measurement of ``zoomq bench render``, in a process of its own.

Each engine and mode runs in a fresh process, so its peak RSS is its own and nothing it loaded
helps the next one. ``python -m zoomq.bench.probe SPEC`` takes a JSON spec and prints one line
``ZOOMQ-PROBE {...}`` with the figures (seconds, GFLOP/s, bytes).

Workloads: ``unet`` (one UNet step, batch 2, at each size, after a warm-up), ``t2i`` (a whole
text-to-image render after a one-step warm-up render), ``keyframe`` (a zoom keyframe k = 1:
outpainting a shrunk keyframe with the inpainting model) and ``matmul`` (the machine's bf16
matrix-multiply peak, measured with OpenVINO and with PyTorch; the higher counts).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
NEGATIVE = "blurry"
SEED = 1234
GUIDANCE = 7.5
TEXT_LEN = 77


def _peak_rss() -> int:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that over fork and exec,
    so a probe would report its parent's peak; VmHWM starts afresh with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed call (the first
    inference allocates)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _keyframe_inputs(size: int, mask_width: int):
    """The canvas and mask of keyframe 1, made from a seeded random keyframe 0."""
    from PIL import Image

    from zoomq.zoom import geometry

    rng = np.random.default_rng(SEED)
    inner = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    canvas, mask = geometry.outpaint_canvas(inner, mask_width, 16)
    return canvas, mask


# -- zoomq ---------------------------------------------------------------------------------------

def _zoomq(spec: dict) -> dict:
    from dataclasses import replace

    from zoomq.config import settings
    from zoomq.render.ov_models import CompiledParts
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    s = replace(settings(), inference_precision=spec["precision"], cache_dir=Path(spec["cache_dir"]),
                threads=spec.get("threads", 0))
    out: dict = {}
    start = time.perf_counter()
    renderer = Renderer(spec["model"], s)
    work, steps = spec["work"], spec["steps"]
    cutoff = spec.get("guidance_cutoff", 1.0)
    if work == "unet":
        channels = renderer.kind["unet_in_channels"]
        text_dim = renderer.encode_text("").shape[-1]
        for size in spec["sizes"]:
            latent = size // 8
            shapes = {"sample": [2, channels, latent, latent], "timestep": [],
                      "encoder_hidden_states": [2, TEXT_LEN, text_dim]}
            t0 = time.perf_counter()
            renderer.parts.compiled("unet", shapes)
            out[f"unet_compile_{size}"] = time.perf_counter() - t0
            if size == 512:  # the compile cache's figures: store (or find) a blob, then load it
                for label in ("unet_cache_store", "unet_cache_load"):
                    t0 = time.perf_counter()
                    CompiledParts(renderer.folder, replace(renderer.settings, compile_cache=True)).compiled("unet", shapes)
                    out[label] = time.perf_counter() - t0
            rng = np.random.default_rng(SEED)
            inputs = {"sample": rng.standard_normal(shapes["sample"], dtype=np.float32),
                      "timestep": np.array(500.0, dtype=np.float32),
                      "encoder_hidden_states": rng.standard_normal(shapes["encoder_hidden_states"], dtype=np.float32)}
            renderer.parts.run("unet", **inputs)  # warm-up: first-inference allocations
            t0 = time.perf_counter()
            renderer.parts.run("unet", **inputs)
            out[f"unet_{size}"] = time.perf_counter() - t0
    elif work in ("t2i", "keyframe"):
        request = RenderRequest(PROMPT, negative_prompt=NEGATIVE, steps=steps, guidance=GUIDANCE, seed=SEED,
                                width=512, height=512, guidance_cutoff=cutoff)
        if work == "keyframe":
            canvas, mask = _keyframe_inputs(512, 128)
            request = replace(request, init_image=canvas, mask=mask, strength=1.0)
        # Two warm-up steps: with a guidance cutoff the second runs the batch-1 UNet, which compiles too.
        renderer.render(replace(request, steps=2))
        out["first_render"] = time.perf_counter() - start  # load + compile + a two-step render
        t0 = time.perf_counter()
        renderer.render(request)
        out[f"{work}_512"] = time.perf_counter() - t0
    else:
        raise ValueError(f"unknown work {work!r}")
    return out


# -- diffusers -----------------------------------------------------------------------------------

def _diffusers(spec: dict) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16" else nullcontext()
    folder = Path(spec["model"]) / "diffusers"
    work, steps = spec["work"], spec["steps"]
    out: dict = {}
    start = time.perf_counter()
    cls = diffusers.StableDiffusionInpaintPipeline if work == "keyframe" else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out["load"] = time.perf_counter() - start
    with torch.inference_mode(), autocast:
        if work == "unet":
            unet = pipe.unet
            for size in spec["sizes"]:
                g = torch.Generator().manual_seed(SEED)
                sample = torch.randn(2, unet.config.in_channels, size // 8, size // 8, generator=g)
                text = torch.randn(2, TEXT_LEN, unet.config.cross_attention_dim, generator=g)
                t = torch.tensor(500.0)
                unet(sample, t, text)  # warm-up
                t0 = time.perf_counter()
                unet(sample, t, text)
                out[f"unet_{size}"] = time.perf_counter() - t0
        elif work in ("t2i", "keyframe"):
            kwargs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, height=512, width=512)
            if work == "keyframe":
                canvas, mask = _keyframe_inputs(512, 128)
                kwargs.update(image=canvas, mask_image=mask, strength=1.0)
            pipe(**kwargs, num_inference_steps=1, generator=torch.Generator().manual_seed(SEED))
            out["first_render"] = time.perf_counter() - start
            t0 = time.perf_counter()
            pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(SEED))
            out["t2i_512" if work == "t2i" else "keyframe_512"] = time.perf_counter() - t0
        else:
            raise ValueError(f"unknown work {work!r}")
    return out


# -- the machine's limit ---------------------------------------------------------------------------

def _matmul(spec: dict) -> dict:
    """GFLOP/s of a large matrix multiplication in OpenVINO and in PyTorch, at f32 and, where the
    CPU computes bf16 (``spec["bf16"]``), at bf16: the machine's practical peak is the best of them.
    Elsewhere bf16 is left out: PyTorch's bf16 matmul falls back to scalar code there, which ran
    for over five minutes at 4096² on an AVX2 EPYC, and OpenVINO ignores the hint."""
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    n, repeats = spec.get("n", 4096), spec.get("repeats", 5)
    flop = 2 * n**3
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    def best(fn) -> float:
        return flop / best_seconds(fn, repeats) / 1e9

    out = {}
    x = ops.parameter([n, n], np.float32)
    model = ov.Model([ops.matmul(x, ops.constant(b), False, False)], [x])
    precisions = ("bf16", "f32") if spec.get("bf16", True) else ("f32",)
    for precision in precisions:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out[f"matmul_openvino_{precision}"] = best(lambda: request.infer([a]))
    torch.set_num_threads(os.cpu_count())
    for precision, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        if precision not in precisions:
            continue
        ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
        out[f"matmul_torch_{precision}"] = best(lambda: torch.matmul(ta, tb))
    out["matmul_peak"] = max(out.values())
    return out


def run(spec: dict) -> dict:
    engine = spec["engine"]
    if engine == "matmul":
        out = _matmul(spec)
    elif engine == "diffusers":
        out = _diffusers(spec)
    elif engine == "zoomq":
        out = _zoomq(spec)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    out["peak_rss"] = _peak_rss()
    return out


def main(argv: list[str], measure=None) -> int:
    """Run ``measure`` (this module's ``run`` by default) on the JSON spec ``argv[1]`` and print
    its figures on the line the parent reads; every probe module's entry point."""
    import warnings

    warnings.filterwarnings("ignore")
    print("ZOOMQ-PROBE " + json.dumps((measure or run)(json.loads(argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
