"""Pure image geometry of the zoom, after the OpenVINO SD2 infinite-zoom notebook.

W is the image side, m the mask width, r = (W - 2m) / W the scale of one keyframe inside the next,
N the frames per keyframe step. With ``seam = 0`` every function reproduces the notebook's pixels.
With ``seam = s > 0`` the inpainting mask reaches s px into the pasted square and the sharp inner
keyframe is pasted back through an alpha ramp s px wide, so the square leaves no hard edge.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def fit_init_image(image: Image.Image, side: int) -> Image.Image:
    """A user's init image as keyframe 0: scaled and centre-cropped to the square (bicubic). Fitting
    a picture already fitted gives it back unchanged, so the producer stores it fitted."""
    return ImageOps.fit(image, (side, side), Image.Resampling.BICUBIC)


def shrink(image: Image.Image, mask_width: int) -> Image.Image:
    """The keyframe shrunk to fit inside the next one (notebook: bicubic resize to W - 2m)."""
    side = image.width - 2 * mask_width
    return image.resize((side, side), Image.Resampling.BICUBIC)


def outpaint_canvas(inner: Image.Image, mask_width: int, seam: int = 0) -> tuple[Image.Image, Image.Image]:
    """The canvas and mask to inpaint keyframe k+1 from keyframe k.

    Canvas: keyframe k shrunk and pasted centred on black. Mask (white = repaint): the border of
    width m, plus ``seam`` px inside the pasted square.
    """
    side = inner.width
    canvas = Image.new("RGB", (side, side))
    canvas.paste(shrink(inner, mask_width), (mask_width, mask_width))
    mask = Image.new("L", (side, side), 255)
    keep = mask_width + seam
    mask.paste(0, (keep, keep, side - keep, side - keep))
    return canvas, mask


def ramp(size: int, width: float, hard: bool = False) -> Image.Image:
    """An L-mode alpha for a square of ``size`` px: 0 at the edge rising to 255 over ``width`` px.

    ``hard`` gives 0 over the band and 255 inside it (used for interpolation frames, where the
    band already holds the blended keyframe). Width 0 is fully opaque.
    """
    if width <= 0:
        return Image.new("L", (size, size), 255)
    d = np.arange(size, dtype=np.float64)
    edge = np.minimum(d, size - 1 - d)  # distance of each pixel row/column to the nearest edge
    if hard:
        line = (edge >= width).astype(np.float64)
    else:
        line = np.clip((edge + 0.5) / width, 0.0, 1.0)
    alpha = np.minimum.outer(line, line)
    return Image.fromarray(np.round(alpha * 255).astype(np.uint8), "L")


def finish_keyframe(inpainted: Image.Image, inner: Image.Image, mask_width: int, seam: int = 0) -> Image.Image:
    """Keyframe k+1: the inpainted canvas with the sharp shrunk keyframe k pasted back over it."""
    small = shrink(inner, mask_width)
    out = inpainted.copy()
    out.paste(small, (mask_width, mask_width), ramp(small.width, seam))
    return out


def crop_margin(side: int, mask_width: int, j: int, frames: int) -> int:
    """Margin of the crop of the outer keyframe shown by frame j of N (notebook's rounding).

    Frame j shows the centre of the outer keyframe at scale r ** (1 - j / N): j = 0 is the inner
    keyframe, j = N the outer one.
    """
    r = 1 - 2 * mask_width / side
    return round((1 - r ** (1 - j / frames)) * side / 2)


def inner_margin(side: int, mask_width: int, crop: int) -> int:
    """Margin at which the inner keyframe appears in a frame whose crop margin is ``crop``."""
    return round((1 - (side - 2 * mask_width) / (side - 2 * crop)) / 2 * side)


def frame(inner: Image.Image, outer: Image.Image, mask_width: int, j: int, frames: int, seam: int = 0) -> Image.Image:
    """Frame j (0 ≤ j ≤ N) of the zoom from ``inner`` (keyframe k) out to ``outer`` (k+1).

    The outer keyframe's centre crop is upscaled to W, and the sharp inner keyframe is pasted over
    its centre at the matching size, so the centre never blurs. With a seam, the pasted keyframe
    leaves a band where the outer keyframe's blend shows; the band grows from 0 at j = 0 (the frame
    is the inner keyframe) to the seam at j = N (the frame is the outer keyframe), so segments
    meet without a jump.
    """
    side = outer.width
    c = crop_margin(side, mask_width, j, frames)
    image = outer.crop((c, c, side - c, side - c)).resize((side, side), Image.Resampling.BICUBIC)
    p = inner_margin(side, mask_width, c)
    size = side - 2 * p
    band = seam * size / (side - 2 * mask_width) * j / frames
    image.paste(inner.resize((size, size), Image.Resampling.BICUBIC), (p, p), ramp(size, band, hard=True))
    return image
