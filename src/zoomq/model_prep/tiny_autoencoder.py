"""The tiny autoencoder (TAESD, diffusers' ``AutoencoderTiny``) a prepared model may carry as an
extra decoder: ``zoomq prepare ... --tiny-autoencoder ID|DIR|random``.

About 1.2 M parameters per half against the SD autoencoder's 34 M/50 M: it decodes a latent at a
small fraction of the cost, losing some fine detail. Its latents are the UNet's as they are (its
scaling factor is 1.0: no division by the model's 0.18215), and it outputs images in [-1, 1] like
the SD decoder, so the same post-processing follows. Only its decoder is converted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from zoomq.errors import ModelError
from zoomq.model_prep import hub

#: What ``--tiny-autoencoder`` takes to build a seeded random-weight TAESD (tests, benchmarks).
RANDOM = "random"
#: The published TAESD for SD 1 and 2 latents, for hints.
HUB_ID = "madebyollin/taesd"
_HUB_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
#: Where ``prepare_random`` keeps a random TAESD's diffusers folder, beside the pipeline's.
KEPT = "diffusers/tiny_autoencoder"


def label(spec: str, seed: int) -> str:
    """The source the manifest records for ``spec``: ``random:seed=N``, a folder's absolute path
    or the hub id; the same label means the same tiny autoencoder."""
    if spec == RANDOM:
        return f"{RANDOM}:seed={seed}"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def seed_of(recorded: str) -> int | None:
    """The seed of a recorded ``random:seed=N`` source; None for another source."""
    m = re.fullmatch(rf"{RANDOM}:seed=(\d+)", recorded)
    return int(m.group(1)) if m else None


def latent_factor(config: dict) -> int:
    """Image pixels per latent pixel of an ``AutoencoderTiny`` config: one upsampling per decoder stage
    after the first (8 for TAESD's four)."""
    stages = len(config.get("num_decoder_blocks", (3, 3, 3, 1)))
    return int(config.get("upsampling_scaling_factor", 2)) ** (stages - 1)


def resolve(spec: str) -> Path:
    """A local ``AutoencoderTiny`` folder (saved by ``save_pretrained``) as it is, or a hub id
    downloaded (or found in the hub cache)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"--tiny-autoencoder {spec}: is a file; pass a folder saved by "
                             "AutoencoderTiny.save_pretrained, a Hugging Face hub id or `random`")
        return path.resolve()
    if not hub.is_hub_id(spec):
        raise ModelError(f"--tiny-autoencoder {spec}: no such folder, and not a Hugging Face hub id (owner/name) "
                         f"or `{RANDOM}`")
    return hub.download(spec, "--tiny-autoencoder", _HUB_FILES)


def check(folder: Path, spec: str, latent_channels: int, model_factor: int) -> None:
    """Raise ``ModelError`` unless ``folder`` holds an ``AutoencoderTiny`` whose latents are the model's."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"--tiny-autoencoder {spec}: {folder} has no config.json; pass a folder saved by "
                         "AutoencoderTiny.save_pretrained") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"--tiny-autoencoder {spec}: cannot read {folder / 'config.json'}: {e}") from None
    cls = config.get("_class_name")
    if cls != "AutoencoderTiny":
        raise ModelError(f"--tiny-autoencoder {spec}: holds a {cls}, not an AutoencoderTiny (TAESD, e.g. {HUB_ID})")
    channels = int(config.get("latent_channels", 4))
    factor = latent_factor(config)
    if (channels, factor) != (latent_channels, model_factor):
        raise ModelError(
            f"--tiny-autoencoder {spec}: its latents have {channels} channels at 1/{factor} of the image side, "
            f"the model's {latent_channels} at 1/{model_factor}; it cannot decode this model's latents"
        )


def build_random(folder: Path, *, seed: int = 0, latent_channels: int = 4, latent_factor: int = 8) -> Path:
    """Build a seeded random-weight ``AutoencoderTiny`` and save it in ``folder``.

    At a latent factor of 8 it has TAESD's architecture exactly (diffusers' default config); another
    power of two gets one stage per halving. Random weights make a near-constant picture, so the last
    convolution is rescaled to spread a random latent's decoding over [-1, 1] (mean 0, deviation 0.5),
    and pictures show whether decoding went right.
    """
    import torch
    from diffusers import AutoencoderTiny

    if latent_factor < 1 or latent_factor & (latent_factor - 1):
        raise ValueError(f"latent_factor must be a power of two, got {latent_factor}")
    stages = latent_factor.bit_length()
    torch.manual_seed(seed)
    if stages == 4:
        model = AutoencoderTiny(latent_channels=latent_channels)
    else:
        model = AutoencoderTiny(
            latent_channels=latent_channels,
            encoder_block_out_channels=(64,) * stages,
            decoder_block_out_channels=(64,) * stages,
            num_encoder_blocks=(1,) + (3,) * (stages - 1),
            num_decoder_blocks=(3,) * (stages - 1) + (1,),
        )
    model.eval()
    last = model.decoder.layers[-1]
    generator = torch.Generator("cpu").manual_seed(seed)
    probe = torch.randn(2, latent_channels, 16, 16, generator=generator)
    with torch.no_grad():
        raw = (model.decoder(probe) + 1) / 2  # the last convolution's output (DecoderTiny maps it by 2x - 1)
        mean, std = raw.mean(), raw.std()
        scale = 0.25 / std
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - mean) * scale + 0.5)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
