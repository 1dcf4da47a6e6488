"""Compile a prepared model for its default render before a job asks for it.

The shapes are exactly those a render at the model's native size with its default guidance compiles
(the UNet at batch 2 with guidance, batch 1 for SD-Turbo's none), so the first such job compiles
nothing. Only OpenVINO is needed, not torch or
diffusers: a worker runs this while its render core is still being imported.
"""

from __future__ import annotations

from zoomq.model import manifest as mf
from zoomq.render.ov_models import CompiledParts


def default_shapes(manifest: mf.Manifest) -> list[tuple[str, dict[str, list[int]]]]:
    """(part, input shapes) of a default render, in the order the render needs them."""
    kind = manifest.kind
    size = kind["native_size"]
    latent = size // manifest.latent_factor
    tokens = manifest.data.get("text_max_length", 77)
    batch = 2 if manifest.defaults["guidance"] > 1.0 else 1  # as Renderer.render: guidance ≤ 1 is batch 1
    shapes = [
        ("text_encoder", {"input_ids": [1, tokens]}),
        ("unet", {"sample": [batch, kind["unet_in_channels"], latent, latent], "timestep": [],
                  "encoder_hidden_states": [batch, tokens, kind["text_hidden_size"]]}),
    ]
    if kind["task"] == "inpainting":  # a zoom keyframe encodes the masked canvas
        shapes.append(("vae_encoder", {"image": [1, 3, size, size]}))
    shapes.append(("vae_decoder", {"latents": [1, kind["latent_channels"], latent, latent]}))
    return shapes


def compile_default(parts: CompiledParts, manifest: mf.Manifest) -> None:
    """Compile ``parts`` for a default render of ``manifest``'s model (kept in the compile cache
    unless ``ZOOMQ_COMPILE_CACHE=off``)."""
    for part, shapes in default_shapes(manifest):
        parts.compiled(part, shapes, warm_up=True)
