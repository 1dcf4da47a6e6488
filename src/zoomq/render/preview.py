"""Live previews: every few steps a small picture of the latents as they are, for the job page.

A render is handed a ``Preview``; after every ``every``-th step (the last excepted: the result
follows at once) it asks ``wanted()`` — a worker answers whether someone watches the job — and only
then decodes: by the model's tiny autoencoder (TAESD, at the full size) when it carries one, else
by a fixed linear map from the 4 latent channels to RGB, at the latent size enlarged (nearest) to
at most ``max_side`` pixels. The PNG goes to ``sink(png, step, total)``. A due preview is skipped
while the previews so far took more than ``budget`` (3 %) of the time since the denoising began.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from zoomq.render.pipeline import Renderer

#: Latent channel → RGB weights for the SD1/SD2 autoencoder's (scaled) latents, the approximation
#: ComfyUI previews SD1.5/SD2 latents with (``comfy/latent_formats.py``, ``SD15.latent_rgb_factors``):
#: RGB ≈ latents · FACTORS, in about [-1, 1]. SD2 shares SD1's autoencoder, so its latents too.
LATENT_RGB_FACTORS = np.array([
    #   R        G        B
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
], dtype=np.float32)

#: Steps between previews when nobody says otherwise.
DEFAULT_EVERY = 3  # TAESD + PNG took 6.3 % of a step (full-size random SD2, 512 px, 2 cores): ~2.1 %
#: The most of a render's time its previews may take: a due preview is skipped while those made
#: so far took more than this share of the time since the render began.
DEFAULT_BUDGET = 0.03


def linear_rgb(latents: torch.Tensor | np.ndarray, max_side: int = 256) -> Image.Image:
    """The cheap preview: latents (1, 4, h, w) → RGB by ``LATENT_RGB_FACTORS``, enlarged by a whole
    factor (nearest) to at most ``max_side`` pixels on the longer side (never shrunk)."""
    lat = np.asarray(latents, dtype=np.float32)[0]
    rgb = np.tensordot(lat[:4], LATENT_RGB_FACTORS, axes=([0], [0]))  # h, w, 3
    pixels = (np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255).round().astype(np.uint8)
    scale = max(1, max_side // max(pixels.shape[:2]))
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(pixels)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: it lives seconds
    return buffer.getvalue()


@dataclass
class Preview:
    """The preview hook a render is handed (``Renderer.render(..., preview=...)``)."""

    sink: Callable[[bytes, int, int], None]  # (png, step, total)
    every: int = DEFAULT_EVERY
    wanted: Callable[[], bool] = lambda: True  # asked at most once per preview step, before decoding
    decoder: str = "auto"  # auto: tiny when the model has it, else linear; or "tiny" / "linear"
    max_side: int = 256  # the linear preview's longer side, at most
    budget: float | None = DEFAULT_BUDGET  # share of the render's time previews may take; None: no limit
    spent: float = 0.0  # seconds taken by previews so far
    made: int = 0
    skipped: int = 0  # due and wanted, but over budget
    _began: float = field(default_factory=time.perf_counter, repr=False)

    def begin(self) -> None:
        """The render starts (``Renderer.render`` calls it): the budget counts from here."""
        self._began, self.spent = time.perf_counter(), 0.0

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and step < total and step % self.every == 0

    def image(self, renderer: Renderer, latents: torch.Tensor) -> Image.Image:
        decoder = self.decoder
        if decoder == "auto":
            decoder = "tiny" if "tiny" in renderer.decoders and latents.shape[1] == 4 else "linear"
        if decoder == "tiny":
            pixels = renderer.decode(latents, "tiny")
            return Image.fromarray((pixels * 255).round().astype(np.uint8))
        return linear_rgb(latents, self.max_side)

    def after_step(self, renderer: Renderer, latents: torch.Tensor, step: int, total: int) -> bool:
        """Called after each step; returns whether a preview was made."""
        if not self.due(step, total):
            return False
        start = time.perf_counter()
        if self.budget is not None and self.spent > self.budget * (start - self._began):
            self.skipped += 1
            return False
        if not self.wanted():
            return False
        self.sink(encode_png(self.image(renderer, latents)), step, total)
        self.spent += time.perf_counter() - start
        self.made += 1
        return True
