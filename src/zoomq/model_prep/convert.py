"""Convert the four SD2 sub-models of a diffusers folder to OpenVINO IR.

Each sub-model is loaded, converted, saved and freed before the next one, so peak memory stays
near one model's size (the full-size UNet is the largest). Shapes are kept dynamic in the IR; the
render core reshapes to static shapes when it compiles. Two routes give the same IR: ``direct``
(``openvino.convert_model`` on the PyTorch module) and ``onnx`` (PyTorch → ONNX → OpenVINO, the
original notebook's route).
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import openvino as ov
import torch

#: Version of the IR zoomq writes, kept in the manifest; ``prepare`` redoes a model made by an older
#: one. 2: the UNet's GEGLU as two projections. 3: the UNet also returns DeepCache's kept features.
CONVERSION = 3


class _TextEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, return_dict=False)[0]


class _SplitGEGLU(torch.nn.Module):
    """diffusers' GEGLU (one projection, then split in value and gate halves) as two projections.

    The same products and sums, so the same numbers; but OpenVINO's CPU plugin ran the split as a
    reference kernel, and without it the full UNet step at 512 px took 1.01 s instead of 1.06 (bf16, AMX).
    """

    def __init__(self, geglu):
        super().__init__()
        weight, bias = geglu.proj.weight, geglu.proj.bias
        half = weight.shape[0] // 2
        self.value = torch.nn.Linear(weight.shape[1], half, bias=bias is not None)
        self.gate = torch.nn.Linear(weight.shape[1], half, bias=bias is not None)
        with torch.no_grad():
            self.value.weight.copy_(weight[:half])
            self.gate.weight.copy_(weight[half:])
            if bias is not None:
                self.value.bias.copy_(bias[:half])
                self.gate.bias.copy_(bias[half:])

    def forward(self, hidden_states, *args, **kwargs):
        return self.value(hidden_states) * torch.nn.functional.gelu(self.gate(hidden_states))  # as GEGLU.gelu on CPU


class _UNet(torch.nn.Module):
    """The UNet; with ``keep`` (DeepCache branches) it also returns each branch's deep feature,
    outputs ``feature_B`` after the noise prediction (see ``model_prep.deepcache``)."""

    def __init__(self, model, keep: tuple[int, ...] = ()):
        super().__init__()
        from diffusers.models.activations import GEGLU

        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if type(child) is GEGLU:
                    setattr(module, name, _SplitGEGLU(child))
        self.model = model
        self.keep = tuple(keep)
        if self.keep:
            from zoomq.model_prep.deepcache import FeatureHooks

            self.hooks = FeatureHooks(model, self.keep)

    def forward(self, sample, timestep, encoder_hidden_states):
        noise = self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        if not self.keep:
            return noise
        return (noise, *(self.hooks.features[b] for b in self.keep))


class _VaeEncoder(torch.nn.Module):
    """Outputs the latent distribution's moments (mean ‖ logvar): sampling from them needs the
    render's random generator, so it happens outside the model, exactly as diffusers does it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model.encode(image, return_dict=False)[0].parameters


class _VaeDecoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents):
        return self.model.decode(latents, return_dict=False)[0]


class _TinyDecoder(torch.nn.Module):
    """TAESD's decoder: takes the UNet's latents as they are (scaling factor 1.0), gives [-1, 1]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents):
        return self.model.decode(latents, return_dict=False)[0]


@dataclass(frozen=True)
class Part:
    """One IR file to produce: its name, how to build the torch module, its inputs."""

    name: str
    build: Callable[[Path], torch.nn.Module]
    # (input name, shape with -1 for dynamic dims, example tensor factory)
    inputs: tuple[tuple[str, list[int], Callable[[], torch.Tensor]], ...]
    #: names of the outputs after the first (``out``)
    outputs: tuple[str, ...] = ()


def parts(folder: Path, in_channels: int, text_hidden: int, latent_channels: int,
          cache_branches: tuple[int, ...] = ()) -> list[Part]:
    """The four sub-models of an SD2 pipeline folder, in conversion order (largest last);
    ``cache_branches``: the DeepCache branches whose features the UNet also returns."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from zoomq.model_prep.deepcache import feature_output_name

    def vae(path):
        return AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch.float32)

    return [
        Part(
            "text_encoder",
            lambda p: _TextEncoder(
                CLIPTextModel.from_pretrained(p, subfolder="text_encoder", torch_dtype=torch.float32)
            ),
            (("input_ids", [-1, 77], lambda: torch.ones(1, 77, dtype=torch.int64)),),
        ),
        Part(
            "vae_encoder",
            lambda p: _VaeEncoder(vae(p)),
            (("image", [-1, 3, -1, -1], lambda: torch.zeros(1, 3, 64, 64)),),
        ),
        Part(
            "vae_decoder",
            lambda p: _VaeDecoder(vae(p)),
            (("latents", [-1, latent_channels, -1, -1], lambda: torch.zeros(1, latent_channels, 8, 8)),),
        ),
        Part(
            "unet",
            lambda p: _UNet(
                UNet2DConditionModel.from_pretrained(p, subfolder="unet", torch_dtype=torch.float32),
                keep=tuple(cache_branches),
            ),
            # An odd latent size makes the trace keep UNet's explicit-upsample-size branch, which
            # is right for every size; a size divisible by 2**ups would bake in the other branch.
            (
                ("sample", [-1, in_channels, -1, -1], lambda: torch.zeros(2, in_channels, 9, 9)),
                ("timestep", [], lambda: torch.tensor(999.0)),
                ("encoder_hidden_states", [-1, 77, text_hidden], lambda: torch.zeros(2, 77, text_hidden)),
            ),
            tuple(feature_output_name(b) for b in cache_branches),
        ),
    ]


def tiny_decoder_part(latent_channels: int) -> Part:
    """The decoder of a tiny autoencoder (``AutoencoderTiny``) saved in a folder of its own."""
    from diffusers import AutoencoderTiny

    from zoomq.manifest import TINY_DECODER

    return Part(
        TINY_DECODER,
        lambda p: _TinyDecoder(AutoencoderTiny.from_pretrained(p, torch_dtype=torch.float32)),
        (("latents", [-1, latent_channels, -1, -1], lambda: torch.zeros(1, latent_channels, 8, 8)),),
    )


def _name_io(model: ov.Model, part: Part) -> ov.Model:
    model.set_friendly_name(part.name)
    for port, (name, _, _) in zip(model.inputs, part.inputs):
        port.get_tensor().set_names({name})
    model.outputs[0].get_tensor().set_names({"out"})
    for port, name in zip(model.outputs[1:], part.outputs):
        port.get_tensor().set_names({name})
    return model


def _convert_direct(module: torch.nn.Module, part: Part) -> ov.Model:
    example = tuple(make() for _, _, make in part.inputs)
    shapes = [(ov.PartialShape(shape), ov.Type.i64 if ex.dtype == torch.int64 else ov.Type.f32)
              for (_, shape, _), ex in zip(part.inputs, example)]
    with torch.no_grad():
        return ov.convert_model(module, example_input=example, input=shapes)


def _convert_via_onnx(module: torch.nn.Module, part: Part, workdir: Path) -> ov.Model:
    example = tuple(make() for _, _, make in part.inputs)
    names = [name for name, _, _ in part.inputs]
    dynamic_axes = {
        name: {i: f"{name}_{i}" for i, dim in enumerate(shape) if dim == -1}
        for name, shape, _ in part.inputs
    }
    path = workdir / f"{part.name}.onnx"
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=names,
            output_names=["out", *part.outputs],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
    return ov.convert_model(str(path))


def convert_part(
    folder: Path,
    part: Part,
    dest: Path,
    *,
    route: str = "direct",
    weights: str = "fp16",
) -> Path:
    """Convert one sub-model of ``folder`` and write ``dest/<name>.xml`` (+ ``.bin``)."""
    module = part.build(folder).eval()
    with tempfile.TemporaryDirectory(prefix="zoomq-onnx-", dir=dest) as workdir:
        if route == "onnx":
            model = _convert_via_onnx(module, part, Path(workdir))
        else:
            model = _convert_direct(module, part)
        del module
        gc.collect()
        model = _name_io(model, part)
        if weights == "int8":
            import nncf  # optional speed-neutral size reduction; imported only when asked for

            model = nncf.compress_weights(model)
        xml = dest / f"{part.name}.xml"
        ov.save_model(model, xml, compress_to_fp16=(weights == "fp16"))
    del model
    gc.collect()
    return xml
