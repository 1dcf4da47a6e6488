"""Keyframe unit: keyframe 0 from a blank, fully masked canvas (or the user's init image), and
keyframe k+1 by outpainting keyframe k. Reads and writes PNG files that carry their recipe.

Any model outpaints: an inpainting model (recommended) is told the mask, a text-to-image model
(SD-Turbo included) blends the known part back into its latents every step (``LatentBlend``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from zoomq.errors import ModelError
from zoomq.render import png
from zoomq.render.request import RenderRequest
from zoomq.zoom import geometry
from zoomq.zoom.settings import ZoomSettings

if TYPE_CHECKING:  # the web front end names keyframes without loading torch
    from zoomq.render.pipeline import Progress, Renderer, TextCache
    from zoomq.render.preview import Preview
    from zoomq.render.unet_call import WrapUNet


def keyframe_name(k: int) -> str:
    return f"keyframe-{k:03d}.png"


ZOOM_TASKS = ("inpainting", "text-to-image")
#: Said where a zoom runs on a text-to-image model.
BLEND_NOTE = ("is a text-to-image model: keyframes are outpainted by latent blending; an inpainting model "
              "(stabilityai/stable-diffusion-2-inpainting) blends the new border more seamlessly")


def check_model(renderer: Renderer) -> None:
    if renderer.task not in ZOOM_TASKS:
        raise ModelError(f"{renderer.folder} is a {renderer.task} model; zoom needs an inpainting or a "
                         "text-to-image model")


def render_keyframe(
    renderer: Renderer,
    settings: ZoomSettings,
    k: int,
    previous: Path | None,
    out: Path,
    progress: Progress | None = None,
    texts: TextCache | None = None,
    preview: Preview | None = None,
    wrap_unet: WrapUNet | None = None,
) -> dict:
    """Render keyframe ``k`` into the PNG ``out`` (``previous`` is keyframe k-1's file) and return
    its recipe; ``texts`` shares the job's prompt embeddings between workers; ``wrap_unet`` runs
    the UNet another way (a worker's guidance split)."""
    check_model(renderer)
    prompt, negative = settings.prompts(k)
    zoom = {"keyframe": k, "job_seed": settings.seed, "mask_width": settings.mask_width, "seam": settings.seam}
    side = settings.size
    if k == 0 and settings.init_image:
        image = geometry.fit_init_image(png.load_image(settings.init_image, "init_image"), side)
        recipe = {"mode": "init-image", "source": str(settings.init_image), **zoom}
    else:
        assert settings.seam is not None, "render_keyframe needs validated settings (validate() sets the seam)"
        if k == 0:
            canvas, mask = Image.new("RGB", (side, side)), Image.new("L", (side, side), 255)
            inner = None
        else:
            assert previous is not None, "keyframe k > 0 outpaints keyframe k-1"
            with Image.open(previous) as f:
                inner = f.convert("RGB")
            canvas, mask = geometry.outpaint_canvas(inner, settings.mask_width, settings.seam)
        request = RenderRequest(
            prompt=prompt, negative_prompt=negative, steps=settings.steps, guidance=settings.guidance,
            guidance_cutoff=settings.guidance_cutoff,
            seed=settings.keyframe_seed(k), scheduler=settings.scheduler, width=side, height=side,
            init_image=canvas, mask=mask, strength=1.0, decoder=settings.decoder,
            cache_interval=settings.cache_interval, cache_branch=settings.cache_branch,
        )
        result = renderer.render(request, progress, texts, latent_blend=True, preview=preview, wrap_unet=wrap_unet)
        image = result.image
        if inner is not None:
            image = geometry.finish_keyframe(image, inner, settings.mask_width, settings.seam)
        recipe = {**result.recipe, **zoom}
    png.save(image, out, recipe)
    return recipe
