"""Inpainting with a text-to-image UNet (4 input channels), the way diffusers' inpainting pipeline
does it: the UNet sees no mask, so after every scheduler step the known part of the picture is put
back — the init image's latents, noised to the next step's timestep — and only the masked part
keeps what the UNet made. The inpainting model (9 channels) is told the mask instead and blends the
border better; this path lets any text-to-image model, SD-Turbo included, outpaint zoom keyframes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class AddsNoise(Protocol):
    """The one scheduler method a blend calls (every diffusers scheduler the renders make has it)."""

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LatentBlend:
    """Called by the denoise loop after each scheduler step (``StableDiffusionInpaintPipeline``
    with ``num_channels_unet == 4``, step for step)."""

    image_latents: torch.Tensor  # the init image, encoded and scaled
    noise: torch.Tensor  # the noise its first latents were made with
    mask: torch.Tensor  # latent-sized, 1 = repaint
    scheduler: AddsNoise
    timesteps: torch.Tensor

    def __call__(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        """``latents`` after step ``i`` with the known part replaced by the init image at the noise
        level of step ``i + 1`` (none after the last step)."""
        known = self.image_latents
        if i < len(self.timesteps) - 1:
            known = self.scheduler.add_noise(known, self.noise, torch.tensor([self.timesteps[i + 1]]))
        return (1 - self.mask) * known + self.mask * latents
