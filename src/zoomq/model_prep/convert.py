"""Convert the four SD2 sub-models of a diffusers folder to OpenVINO IR.

Each sub-model is loaded, converted, saved and freed before the next one, so peak memory stays
near one model's size (the full-size UNet is the largest). Shapes are kept dynamic in the IR; the
render core reshapes to static shapes when it compiles. Two routes give the same IR: ``direct``
(``openvino.convert_model`` on the PyTorch module) and ``onnx`` (PyTorch → ONNX → OpenVINO, the
original notebook's route).
"""

from __future__ import annotations

from pathlib import Path

import torch

from zoomq.model.manifest import feature_output_name
from zoomq.model_prep.deepcache_export import FeatureHooks
from zoomq.model_prep.export import ExportUNet, Part

#: Version of the IR zoomq writes, kept in the manifest; ``prepare`` redoes a model made by an older
#: one. 2: the UNet's GEGLU as two projections. 3: the UNet also returns DeepCache's kept features.
CONVERSION = 3


class _TextEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids, return_dict=False)[0]


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


def parts(folder: Path, in_channels: int, text_hidden: int, latent_channels: int,
          cache_branches: tuple[int, ...] = ()) -> list[Part]:
    """The four sub-models of an SD2 pipeline folder, in conversion order (largest last);
    ``cache_branches``: the DeepCache branches whose features the UNet also returns."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

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
            lambda p: _unet(p, cache_branches),
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


def _unet(folder: Path, cache_branches: tuple[int, ...]) -> ExportUNet:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    return ExportUNet(model, FeatureHooks(model, cache_branches) if cache_branches else None)


def tiny_decoder_part(latent_channels: int) -> Part:
    """The decoder of a tiny autoencoder (``AutoencoderTiny``) saved in a folder of its own."""
    from diffusers import AutoencoderTiny

    from zoomq.model.manifest import TINY_DECODER

    return Part(
        TINY_DECODER,
        lambda p: _TinyDecoder(AutoencoderTiny.from_pretrained(p, torch_dtype=torch.float32)),
        (("latents", [-1, latent_channels, -1, -1], lambda: torch.zeros(1, latent_channels, 8, 8)),),
    )


