"""One measurement of a benchmark, in a process of its own: ``in_fresh_process(spec)``.

Each engine and mode runs in a fresh process, so its peak RSS is its own and nothing it loaded
helps the next one. The process is forked from a server that has only imported the libraries
(PyTorch, diffusers, OpenVINO, zoomq's render core: about 7 s of CPU each time otherwise, the
largest part of a miniature run); no figure includes an import. ``python -m benchmarks.probe SPEC``
runs one spec by hand and prints one line ``ZOOMQ-PROBE {...}`` with the figures (seconds, GFLOP/s,
bytes). The spec's ``probe`` says which:

- ``render`` (the default; ``peer_render``): ``engine`` zoomq or diffusers, ``work`` ``unet`` (one
  UNet step, batch 2, at each size, after a warm-up), ``t2i`` (a whole text-to-image render after a
  warm-up render) or ``keyframe`` (a zoom keyframe k = 1: outpainting a shrunk keyframe with the
  inpainting model); or ``engine`` ``matmul``: the machine's matrix-multiply peak, measured with
  OpenVINO and with PyTorch (the higher counts);
- ``parts`` (``fast_tier``): SD-Turbo's workloads ``image`` and ``keyframe`` at ``size`` px with zoomq
  or diffusers: the whole render's seconds (a median over a few renders, each with a prompt of its
  own, so the text encoder runs every time, as for a new request) and those of its parts;
- ``deepcache`` (``deepcache_gain``): ``work`` ``share`` (the shallow branch's share of a UNet call),
  ``t2i`` or ``keyframe`` at a cache ``interval``.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import multiprocessing.context
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from zoomq.render.pipeline import Renderer

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
NEGATIVE = "blurry"
SEED = 1234
GUIDANCE = 7.5
TEXT_LEN = 77
PARTS = ("text", "unet", "decoder")  # the networks a ``parts`` probe times (and the encoder where it runs)
LINE = "ZOOMQ-PROBE "


# -- the parent's side ----------------------------------------------------------------------------

# What the probes import, done once in the fork server: only imports, no thread pool or OpenVINO
# core is started there, so forking it is safe.
PRELOAD = ("torch", "openvino", "zoomq.render.pipeline",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint")


def _context() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # read when the server starts: at the first probe
    return ctx


def in_fresh_process(spec: dict) -> dict:
    """Run one measurement in a new process (forked from the preloaded server, with this process's
    environment as it is now); returns its figures."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="zoomq-probe-", suffix=".log") as log:
        proc = ctx.Process(target=_child, args=(spec, dict(os.environ), log.name, send), daemon=True)
        proc.start()
        send.close()
        try:
            status, payload = receive.recv()
        except EOFError:  # it died without a word: killed, out of memory, a crash in native code
            status, payload = "died", ""
        proc.join()
        if status == "ok":
            return payload
        tail = "\n".join((payload or Path(log.name).read_text(errors="replace")).strip().splitlines()[-15:])
    raise RuntimeError(f"probe {spec.get('probe', 'render')} {spec['engine']}/{spec.get('work')} failed "
                       f"(exit {proc.exitcode}):\n{tail}")


def _child(spec: dict, env: dict[str, str], log: str, send: Connection) -> None:
    """The forked probe: the parent's environment, output to ``log`` (library chatter off the
    parent's terminal), then the figures or the error's traceback back through ``send``."""
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    warnings.filterwarnings("ignore")
    try:
        send.send(("ok", measure(spec)))
    except BaseException:  # reported to the parent, which raises it
        send.send(("error", traceback.format_exc()))


def measure(spec: dict) -> dict:
    """The figures of ``spec`` (see the module docstring), measured in this process."""
    probe, engine = spec.get("probe", "render"), spec["engine"]
    if probe == "deepcache":
        return _deepcache(spec)
    if probe == "parts":
        out = _parts_zoomq(spec) if engine == "zoomq" else _parts_diffusers(spec)
    elif probe != "render":
        raise ValueError(f"unknown probe {probe!r}")
    elif engine == "matmul":
        out = _matmul(spec)
    elif engine == "diffusers":
        out = _render_diffusers(spec)
    elif engine == "zoomq":
        out = _render_zoomq(spec)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    out["peak_rss"] = _peak_rss()
    return out


def main(argv: list[str]) -> int:
    """Measure the JSON spec ``argv[1]`` and print its figures on the line the parent reads."""
    warnings.filterwarnings("ignore")
    print(LINE + json.dumps(measure(json.loads(argv[1]))), flush=True)
    return 0


# -- what every probe shares ----------------------------------------------------------------------

def _peak_rss() -> int:
    """This process's peak RSS. Not getrusage's ru_maxrss: Linux carries that over fork and exec,
    so a probe would report its parent's peak; VmHWM starts afresh with the new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed call (the first
    inference allocates)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def keyframe_inputs(size: int, mask_width: int) -> tuple[Image.Image, Image.Image]:
    """The canvas and mask of keyframe 1, made from a seeded random keyframe 0."""
    from PIL import Image

    from zoomq.zoom import geometry

    rng = np.random.default_rng(SEED)
    inner = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    canvas, mask = geometry.outpaint_canvas(inner, mask_width, 16)
    return canvas, mask


def _renderer(spec: dict) -> Renderer:
    """zoomq's renderer of ``spec["model"]`` at ``precision``, compiling into ``cache_dir`` (and with
    ``threads``, where the spec gives them)."""
    from zoomq.config import settings
    from zoomq.render.pipeline import Renderer

    s = replace(settings(), inference_precision=spec["precision"], cache_dir=Path(spec["cache_dir"]))
    if "threads" in spec:
        s = replace(s, threads=spec["threads"])
    return Renderer(spec["model"], s)


def _pipeline(spec: dict, inpainting: bool) -> tuple[Any, AbstractContextManager]:
    """diffusers' pipeline of ``spec["model"]`` on all the threads (or ``threads``), and the
    context its calls run in: bf16 autocast where ``precision`` is bf16."""
    import diffusers
    import torch

    torch.set_num_threads(spec.get("threads") or os.cpu_count() or 1)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if spec["precision"] == "bf16" else nullcontext()
    cls = diffusers.StableDiffusionInpaintPipeline if inpainting else diffusers.StableDiffusionPipeline
    pipe = cls.from_pretrained(Path(spec["model"]) / "diffusers", torch_dtype=torch.float32, safety_checker=None,
                               requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, autocast


def _seeded() -> Any:
    import torch

    return torch.Generator().manual_seed(SEED)


# -- render: zoomq against diffusers ---------------------------------------------------------------

def _render_zoomq(spec: dict) -> dict:
    start = time.perf_counter()
    renderer = _renderer({"threads": 0, **spec})
    if spec["work"] == "unet":
        return _zoomq_unet_steps(renderer, spec["sizes"])
    if spec["work"] in ("t2i", "keyframe"):
        return _zoomq_whole_render(renderer, spec, start)
    raise ValueError(f"unknown work {spec['work']!r}")


def _zoomq_unet_steps(renderer: Renderer, sizes: list[int]) -> dict:
    """At each size: the UNet's compile, then one timed batch-2 step after a warm-up one; at 512 px
    also the compile cache's figures (store a blob, then load it)."""
    from zoomq.render.ov_models import CompiledParts

    out: dict = {}
    channels = renderer.kind["unet_in_channels"]
    text_dim = renderer.encode_text("").shape[-1]
    for size in sizes:
        latent = size // 8
        shapes = {"sample": [2, channels, latent, latent], "timestep": [],
                  "encoder_hidden_states": [2, TEXT_LEN, text_dim]}
        t0 = time.perf_counter()
        renderer.parts.compiled("unet", shapes)
        out[f"unet_compile_{size}"] = time.perf_counter() - t0
        if size == 512:
            for label in ("unet_cache_store", "unet_cache_load"):
                t0 = time.perf_counter()
                CompiledParts(renderer.folder, replace(renderer.settings, compile_cache="on")).compiled("unet", shapes)
                out[label] = time.perf_counter() - t0
        rng = np.random.default_rng(SEED)
        inputs = {"sample": rng.standard_normal(shapes["sample"], dtype=np.float32),
                  "timestep": np.array(500.0, dtype=np.float32),
                  "encoder_hidden_states": rng.standard_normal(shapes["encoder_hidden_states"], dtype=np.float32)}
        renderer.parts.run("unet", **inputs)  # warm-up: first-inference allocations
        t0 = time.perf_counter()
        renderer.parts.run("unet", **inputs)
        out[f"unet_{size}"] = time.perf_counter() - t0
    return out


def _zoomq_whole_render(renderer: Renderer, spec: dict, start: float) -> dict:
    """A whole 512 px render (``work`` t2i or keyframe) after a two-step warm-up render."""
    from zoomq.render.request import RenderRequest

    work = spec["work"]
    request = RenderRequest(PROMPT, negative_prompt=NEGATIVE, steps=spec["steps"], guidance=GUIDANCE, seed=SEED,
                            width=512, height=512, guidance_cutoff=spec.get("guidance_cutoff", 1.0))
    if work == "keyframe":
        canvas, mask = keyframe_inputs(512, 128)
        request = replace(request, init_image=canvas, mask=mask, strength=1.0)
    # Two warm-up steps: with a guidance cutoff the second runs the batch-1 UNet, which compiles too.
    renderer.render(replace(request, steps=2))
    out = {"first_render": time.perf_counter() - start}  # load + compile + a two-step render
    t0 = time.perf_counter()
    renderer.render(request)
    out[f"{work}_512"] = time.perf_counter() - t0
    return out


def _render_diffusers(spec: dict) -> dict:
    import torch

    work = spec["work"]
    if work not in ("unet", "t2i", "keyframe"):
        raise ValueError(f"unknown work {work!r}")
    start = time.perf_counter()
    pipe, autocast = _pipeline(spec, inpainting=work == "keyframe")
    out = {"load": time.perf_counter() - start}
    with torch.inference_mode(), autocast:
        if work == "unet":
            out.update(_diffusers_unet_steps(pipe.unet, spec["sizes"]))
        else:
            out.update(_diffusers_whole_render(pipe, work, spec["steps"], start))
    return out


def _diffusers_unet_steps(unet: Any, sizes: list[int]) -> dict:
    """At each size, one timed batch-2 UNet step after a warm-up one."""
    import torch

    out = {}
    for size in sizes:
        g = _seeded()
        sample = torch.randn(2, unet.config.in_channels, size // 8, size // 8, generator=g)
        text = torch.randn(2, TEXT_LEN, unet.config.cross_attention_dim, generator=g)
        t = torch.tensor(500.0)
        unet(sample, t, text)  # warm-up
        t0 = time.perf_counter()
        unet(sample, t, text)
        out[f"unet_{size}"] = time.perf_counter() - t0
    return out


def _diffusers_whole_render(pipe: Any, work: str, steps: int, start: float) -> dict:
    """A whole 512 px render (``work`` t2i or keyframe) after a one-step warm-up render."""
    kwargs: dict[str, Any] = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, height=512,
                                  width=512)
    if work == "keyframe":
        canvas, mask = keyframe_inputs(512, 128)
        kwargs.update(image=canvas, mask_image=mask, strength=1.0)
    pipe(**kwargs, num_inference_steps=1, generator=_seeded())
    out = {"first_render": time.perf_counter() - start}
    t0 = time.perf_counter()
    pipe(**kwargs, num_inference_steps=steps, generator=_seeded())
    out[f"{work}_512"] = time.perf_counter() - t0
    return out


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

    def best(fn: Callable[[], object]) -> float:
        return flop / best_seconds(fn, repeats) / 1e9

    out = {}
    x = ops.parameter([n, n], np.float32)
    model = ov.Model([ops.matmul(x, ops.constant(b), False, False)], [x])
    precisions = ("bf16", "f32") if spec.get("bf16", True) else ("f32",)
    for precision in precisions:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        out[f"matmul_openvino_{precision}"] = best(partial(request.infer, [a]))
    torch.set_num_threads(os.cpu_count() or 1)
    for precision, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        if precision in precisions:
            ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)
            out[f"matmul_torch_{precision}"] = best(partial(torch.matmul, ta, tb))
    out["matmul_peak"] = max(out.values())
    return out


# -- parts: where the fast tier's render time goes --------------------------------------------------

class _Clock:
    """Seconds spent in each part during one render."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - t0
        return call


def _timed_renders(render: Callable[[str], object], encode: Callable[[object], None], clock: _Clock,
                   repeats: int) -> dict:
    """Medians over ``repeats`` renders, each of a prompt of its own: the render, its PNG and its
    parts; ``rest`` (outside the networks) per render, so its median is a real one."""
    runs = []
    for r in range(repeats):
        clock.spent.clear()
        t0 = time.perf_counter()
        image = render(f"{PROMPT}, take {r}")
        rendered = time.perf_counter()
        encode(image)
        parts = {p: clock.spent.get(p, 0.0) for p in (*PARTS, "encoder")}
        runs.append({"render": rendered - t0, "png": time.perf_counter() - rendered, **parts,
                     "rest": rendered - t0 - sum(parts.values())})
    return {key: statistics.median(run.get(key, 0.0) for run in runs) for key in runs[0]}


def _parts_zoomq(spec: dict) -> dict:
    from zoomq.render import png
    from zoomq.render.request import RenderRequest

    start = time.perf_counter()
    renderer = _renderer(spec)
    clock = _Clock()
    part_of = {"text_encoder": "text", "unet": "unet", "vae_decoder": "decoder", "tiny_vae_decoder": "decoder",
               "vae_encoder": "encoder"}
    parts: Any = renderer.parts  # its ``run`` timed in place: the renderer calls every network through it
    run = parts.run

    def timed_run(part: str, **inputs: Any) -> Any:
        return clock.timed(part_of.get(part, part), run)(part, **inputs)

    parts.run = timed_run
    keyframe, size = spec["work"] == "keyframe", spec["size"]
    canvas, mask = keyframe_inputs(size, size // 4) if keyframe else (None, None)

    def request(prompt: str) -> RenderRequest:
        return RenderRequest(prompt, steps=spec["steps"], guidance=0.0, seed=SEED, width=size, height=size,
                             decoder=spec["decoder"], init_image=canvas, mask=mask,
                             strength=1.0 if keyframe else None)

    def render(prompt: str) -> object:
        return renderer.render(request(prompt), latent_blend=keyframe)

    def encode(result: Any) -> None:
        png.encode(result.image, result.recipe)

    render("warm-up")
    first = time.perf_counter() - start
    return {"first_render": first, **_timed_renders(render, encode, clock, spec.get("repeats", 5))}


def _parts_diffusers(spec: dict) -> dict:
    import diffusers
    import torch

    keyframe, size = spec["work"] == "keyframe", spec["size"]
    start = time.perf_counter()
    pipe, autocast = _pipeline(spec, inpainting=keyframe)
    if spec["decoder"] == "tiny":
        pipe.vae = diffusers.AutoencoderTiny.from_pretrained(Path(spec["model"]) / "diffusers" / "tiny_autoencoder",
                                                             torch_dtype=torch.float32)
    clock = _Clock()
    pipe.text_encoder.forward = clock.timed("text", pipe.text_encoder.forward)
    pipe.unet.forward = clock.timed("unet", pipe.unet.forward)
    pipe.vae.decode = clock.timed("decoder", pipe.vae.decode)
    pipe.vae.encode = clock.timed("encoder", pipe.vae.encode)
    kwargs: dict[str, Any] = dict(guidance_scale=0.0, height=size, width=size, num_inference_steps=spec["steps"])
    if keyframe:
        canvas, mask = keyframe_inputs(size, size // 4)
        kwargs.update(image=canvas, mask_image=mask, strength=1.0)

    def render(prompt: str) -> object:
        return pipe(prompt, **kwargs, generator=_seeded()).images[0]

    def encode(image: Any) -> None:
        image.save(io.BytesIO(), format="PNG")

    with torch.inference_mode(), autocast:
        render("warm-up")
        first = time.perf_counter() - start
        return {"first_render": first, **_timed_renders(render, encode, clock, spec.get("repeats", 5))}


# -- deepcache: the shallow branch and the cache interval ------------------------------------------

def _deepcache(spec: dict) -> dict:
    """``work`` ``share`` (see ``_shallow_share``), or the seconds of a whole ``t2i`` or ``keyframe``
    render at ``interval``, after a two-step warm-up that compiles the full and the shallow UNet."""
    from zoomq.render.request import RenderRequest

    renderer = _renderer(spec)
    size, work = spec["size"], spec["work"]
    if work == "share":
        return _shallow_share(renderer, size, spec["branch"])
    request = RenderRequest(PROMPT, negative_prompt=NEGATIVE, steps=spec["steps"], guidance=GUIDANCE, seed=SEED,
                            width=size, height=size, cache_interval=spec["interval"], cache_branch=spec["branch"])
    if work == "keyframe":
        canvas, mask = keyframe_inputs(size, size // 4)
        request = replace(request, init_image=canvas, mask=mask, strength=1.0)
    renderer.render(replace(request, steps=2))
    t0 = time.perf_counter()
    renderer.render(request)
    return {work: time.perf_counter() - t0}


def _shallow_share(renderer: Renderer, size: int, branch: int, repeats: int = 3) -> dict:
    """Seconds of one full UNet call and one shallow-branch call at batch 2, best of ``repeats``."""
    from zoomq.model.manifest import feature_output_name, shallow_part_name

    channels = renderer.kind["unet_in_channels"]
    text = renderer.encode_text("")
    latent = size // renderer.latent_factor
    rng = np.random.default_rng(SEED)
    inputs = {"sample": rng.standard_normal([2, channels, latent, latent], dtype=np.float32),
              "timestep": np.array(500.0, dtype=np.float32),
              "encoder_hidden_states": np.concatenate([text, text]).astype(np.float32)}
    _, feature = renderer.parts.run_outputs("unet", (feature_output_name(branch),), **inputs)  # compiles too

    full = best_seconds(lambda: renderer.parts.run("unet", **inputs), repeats)
    shallow = best_seconds(lambda: renderer.parts.run(shallow_part_name(branch), **inputs, feature=feature), repeats)
    return {"unet_full": full, "unet_shallow": shallow, "shallow_share": shallow / full}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
