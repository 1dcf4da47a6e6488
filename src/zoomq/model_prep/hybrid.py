"""Hybrid INT8 quantization of the UNet with NNCF (``zoomq prepare --weights int8-hybrid``).

Hybrid, as optimum-intel does it for diffusion models: the weights of MatMul layers become
weight-only INT8, and convolutions (most of the UNet's arithmetic) are quantized in full —
weights and activations — so they run on the CPU's INT8 units. Activation ranges come from
calibration on the model's own denoising inputs: the UNet inputs of a few short renders of the
prepared model, recorded as it denoises. The picture changes (measured and reported by the tests
and ``python -m benchmarks render``), which is why this is an opt-in weight format.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

PROMPTS = (
    "a lighthouse on a cliff at sunset, oil painting",
    "a portrait of an old sailor, detailed photograph",
    "an endless library with spiral staircases, fantasy art",
    "a city street in the rain at night, neon lights",
    "a bowl of fruit on a wooden table, still life",
    "a mountain lake in winter, watercolor",
)


def calibration_inputs(folder: Path, samples: int, size: int, steps: int = 8) -> list[dict[str, np.ndarray]]:
    """UNet inputs recorded while the prepared model in ``folder`` denoises the calibration
    prompts at ``size`` px (f32): ``samples`` of them, spread over prompts and steps."""
    from zoomq.config import settings
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest
    from zoomq.zoom import geometry

    recorded: list[dict[str, np.ndarray]] = []

    def recording(unet):
        def call(sample, t, embeds, i):
            recorded.append({"sample": sample.numpy().copy(), "timestep": np.array(float(t), dtype=np.float32),
                             "encoder_hidden_states": np.array(embeds)})
            return unet(sample, t, embeds, i)
        return call

    renderer = Renderer(folder, replace(settings(), inference_precision="f32"))
    rng = np.random.default_rng(0)
    for i, prompt in enumerate(PROMPTS * (samples // (len(PROMPTS) * steps) + 1)):
        if len(recorded) >= samples:
            break
        request = RenderRequest(prompt, negative_prompt="blurry, low quality", steps=steps, seed=i,
                                width=size, height=size)
        if renderer.task == "inpainting":  # a zoom keyframe: outpaint around a shrunk picture
            inner = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            canvas, mask = geometry.outpaint_canvas(inner, size // 4)
            request = replace(request, init_image=canvas, mask=mask, strength=1.0)
        renderer.render(request, wrap_unet=recording)
    return recorded[:samples]


_PASS_THROUGH = ("Convert", "Reshape", "Transpose", "Unsqueeze", "Multiply", "Subtract")


def _constant(output) -> bool:
    """True when ``output`` is computed from constants only (a weight and its decompression)."""
    node = output.get_node()
    if node.get_type_name() == "Constant":
        return True
    return node.get_type_name() in _PASS_THROUGH and all(_constant(i.get_source_output()) for i in node.inputs())


def _weighted_matmuls(model) -> list[str]:
    """Names of the MatMuls with a weight input: these get weight-only INT8."""
    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and any(_constant(i.get_source_output()) for i in op.inputs())]


def quantize_unet(folder: Path, samples: int = 32, size: int | None = None,
                  report: Callable[[str], None] = log.info) -> None:
    """Replace ``folder/unet.xml`` by its hybrid-INT8 version, calibrated on the model itself."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    from zoomq.model import manifest as mf

    nncf.set_log_level(logging.ERROR)  # it lists every node it skips; our report says what happens
    native = mf.read(folder).kind["native_size"]
    size = size or max(128, native // 2)  # convolutions are size-agnostic; half size calibrates 4x faster
    report(f"calibrating the UNet on {samples} of its own denoising inputs ({size} px)")
    dataset = calibration_inputs(folder, samples, size)
    model = ov.Core().read_model(folder / "unet.xml")
    matmuls = _weighted_matmuls(model)
    report(f"quantizing the UNet: {len(matmuls)} MatMul weights to INT8, convolutions to INT8 in full")
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                  ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
    model = nncf.quantize(
        model, nncf.Dataset(dataset), subset_size=len(dataset), model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=matmuls, validate=False),
        advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alpha=-1),
    )
    staged = folder / "unet.int8.xml"
    ov.save_model(model, staged, compress_to_fp16=False)
    del model
    staged.replace(folder / "unet.xml")
    staged.with_suffix(".bin").replace(folder / "unet.bin")
