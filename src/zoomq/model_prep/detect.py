"""Tell what kind of Stable Diffusion model a diffusers folder holds, from its own config files.

The name of a model says nothing reliable; its configs do: the UNet's input channels (4 =
text-to-image, 9 = inpainting), the scheduler's prediction type, the sizes of the latent space, and
whether it is a few-step distilled model (SD-Turbo), whose defaults differ from every other's.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoomq.errors import ModelError
from zoomq.model.kind import DEFAULTS, ModelKind, latent_factor_of, variant_of

_REQUIRED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_TASKS = {4: "text-to-image", 9: "inpainting"}  # by the UNet's input channels


def _read(folder: Path, rel: str) -> dict:
    path = folder / rel
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder}: missing {rel}; this is not a complete diffusers pipeline folder") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}: cannot read {rel}: {e}") from None


def _pipeline_index(folder: Path) -> dict:
    """The folder's ``model_index.json``, that of a pipeline with Stable Diffusion 2's parts; ``ModelError``
    for a folder that is no diffusers pipeline, or another kind of one."""
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); "
            "pass a folder saved by diffusers' save_pretrained or a Hugging Face hub id"
        )
    index = _read(folder, "model_index.json")
    pipeline = index.get("_class_name", "?")
    if "text_encoder_2" in index or "transformer" in index:
        raise ModelError(
            f"{folder}: unsupported architecture {pipeline} (SDXL/SD3-style); zoomq runs Stable Diffusion 2 models"
        )
    missing = [c for c in _REQUIRED if not index.get(c) or index[c] == [None, None]]
    if missing:
        raise ModelError(f"{folder}: {pipeline} has no {', '.join(missing)}; zoomq needs an SD2 pipeline")
    if index["unet"][1] != "UNet2DConditionModel" or index["vae"][1] != "AutoencoderKL":
        raise ModelError(
            f"{folder}: unsupported architecture (unet {index['unet'][1]}, vae {index['vae'][1]}); "
            "zoomq needs UNet2DConditionModel + AutoencoderKL as in Stable Diffusion 2"
        )
    return index


def _task(folder: Path, pipeline: str, unet: dict) -> str:
    """What the UNet renders, by its input channels; ``ModelError`` for a UNet zoomq cannot run."""
    in_channels = unet.get("in_channels", 4)
    if in_channels not in _TASKS:
        raise ModelError(
            f"{folder}: unsupported architecture {pipeline}: UNet with {in_channels} input channels "
            "(zoomq renders 4-channel text-to-image and 9-channel inpainting models; depth and "
            "upscaler models are not supported)"
        )
    for key in ("class_embed_type", "addition_embed_type", "time_cond_proj_dim"):
        if unet.get(key) is not None:
            raise ModelError(f"{folder}: unsupported architecture {pipeline}: UNet uses {key}={unet[key]!r}")
    return _TASKS[in_channels]


def _text_width(folder: Path, unet: dict, text: dict) -> int:
    """The width of the text embeddings, on which the UNet and the text encoder must agree."""
    cross = unet.get("cross_attention_dim")
    hidden = text.get("hidden_size")
    if cross != hidden:
        raise ModelError(
            f"{folder}: UNet cross_attention_dim {cross} does not match text encoder hidden_size {hidden}"
        )
    if hidden is None:
        raise ModelError(f"{folder}: text_encoder/config.json gives no hidden_size; not a CLIP text encoder's config")
    return int(hidden)


def _family(unet: dict) -> str:
    """SD2 or SD1 by the width of the text embeddings the UNet attends to; a miniature one (tests)
    by its attention's projections."""
    cross = unet.get("cross_attention_dim")
    if cross == 1024:
        return "sd2"
    if cross == 768:
        return "sd1"
    return "sd2-miniature" if unet.get("use_linear_projection") else "sd1-miniature"


def detect(folder: Path) -> ModelKind:
    """Detect the model kind of a diffusers folder, or raise ``ModelError`` saying why it won't do."""
    folder = Path(folder)
    pipeline = _pipeline_index(folder).get("_class_name", "?")
    unet = _read(folder, "unet/config.json")
    vae = _read(folder, "vae/config.json")
    text = _read(folder, "text_encoder/config.json")
    scheduler = _read(folder, "scheduler/scheduler_config.json")
    task = _task(folder, pipeline, unet)
    hidden = _text_width(folder, unet, text)
    scale = latent_factor_of(vae)
    variant = variant_of(scheduler)
    return ModelKind(
        task=task,
        family=_family(unet),
        prediction_type=scheduler.get("prediction_type", "epsilon"),
        native_size=int(unet.get("sample_size", 64)) * scale,
        latent_channels=int(vae.get("latent_channels", 4)),
        unet_in_channels=unet.get("in_channels", 4),
        vae_scale_factor=scale,
        vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
        text_hidden_size=hidden,
        variant=variant,
        defaults=dict(DEFAULTS[variant]),
    )
