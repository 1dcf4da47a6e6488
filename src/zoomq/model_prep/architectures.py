"""Random-weight SD2 pipelines built from config alone: miniature ones for tests and the offline
demo, full-size ones for benchmarks (speed does not depend on weight values).

Both keep the SD2 traits that matter to conversion and rendering: linear-projection attention,
an OpenCLIP-style text encoder (GELU, pad token ``!``), a VAE with 8× downsampling (another
power of two on request, to test that nothing assumes 8), a 4- or 9-channel UNet and a
selectable prediction type; with ``turbo``, SD-Turbo's scheduler (the rest of SD-Turbo is SD 2.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from zoomq.model_prep.tokenizer import write_tokenizer

_SCHEDULER_BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
#: stabilityai/sd-turbo's scheduler: Euler, trailing timestep spacing, epsilon prediction.
TURBO_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="trailing",
    use_karras_sigmas=False,
)


def _unet(full: bool, in_channels: int, sample_size: int) -> UNet2DConditionModel:
    if full:  # stabilityai/stable-diffusion-2-1(-base) and 2-inpainting
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
        )
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
    )


def _vae_blocks(latent_factor: int) -> int:
    """Blocks of a VAE that downsamples by ``latent_factor``: diffusers' factor is 2 ** (blocks - 1)."""
    if latent_factor < 1 or latent_factor & (latent_factor - 1):
        raise ValueError(f"latent_factor must be a power of two, got {latent_factor}")
    return latent_factor.bit_length()


def _vae(full: bool, sample_size: int, latent_factor: int = 8) -> AutoencoderKL:
    blocks = _vae_blocks(latent_factor)
    widths = (128, 256, 512, 512) if full else (32, 32, 64, 64)
    channels = (widths + widths[-1:] * blocks)[:blocks]  # SD2's widths; beyond 4 blocks, the last again
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=channels,
        layers_per_block=2 if full else 1,
        latent_channels=4,
        sample_size=sample_size,
    )


def _text_encoder(full: bool) -> CLIPTextModel:
    common: dict[str, Any] = dict(
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    if full:  # OpenCLIP ViT-H text tower as SD2 uses it (23 of 24 layers)
        config = CLIPTextConfig(
            **common,
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            projection_dim=512,
        )
    else:
        config = CLIPTextConfig(
            **common,
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=4,
            projection_dim=32,
        )
    return CLIPTextModel(config).eval()


def build_random_unet(folder: Path, *, full: bool, inpainting: bool, size: int, seed: int = 0,
                      latent_factor: int = 8) -> None:
    """Save only the UNet of ``build_random_pipeline``'s pipeline (the same weights for the same
    arguments) as ``folder/unet``: for benchmarks of the UNet alone, without the other parts' cost."""
    torch.manual_seed(seed)
    unet = _unet(full, 9 if inpainting else 4, size // latent_factor)
    unet.save_pretrained(Path(folder) / "unet", safe_serialization=True)


def build_random_pipeline(
    folder: Path,
    *,
    full: bool,
    inpainting: bool,
    size: int,
    prediction_type: str,
    seed: int = 0,
    latent_factor: int = 8,
    turbo: bool = False,
) -> None:
    """Build a seeded random SD2 pipeline and save it as a diffusers folder; ``turbo`` gives it
    SD-Turbo's scheduler config (epsilon prediction only, as SD-Turbo).

    ``size`` is the native image side in pixels (a multiple of 8 and of ``latent_factor``, the
    VAE's downsampling); the same arguments always give the same weights.
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    torch.manual_seed(seed)
    unet = _unet(full, 9 if inpainting else 4, size // latent_factor)
    torch.manual_seed(seed + 1)
    vae = _vae(full, size, latent_factor)
    torch.manual_seed(seed + 2)
    text_encoder = _text_encoder(full)
    tokenizer = write_tokenizer(Path(folder) / "tokenizer")
    if turbo:
        if prediction_type != "epsilon":
            raise ValueError("SD-Turbo predicts epsilon; a turbo model takes no other prediction type")
        scheduler = EulerDiscreteScheduler.from_config(TURBO_SCHEDULER)
    elif prediction_type == "v_prediction":
        scheduler = DDIMScheduler.from_config({**_SCHEDULER_BASE, "prediction_type": prediction_type})
    else:  # like 2.1-base and 2-inpainting; from_config ignores the DDIM-only keys as diffusers does
        scheduler = PNDMScheduler.from_config(
            {**_SCHEDULER_BASE, "prediction_type": prediction_type, "skip_prk_steps": True}
        )
    cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
