"""Images for tests (also a pytest plugin, see conftest.py): how close a render is to its reference, and
the session fixtures ``init_image`` and ``square_mask`` that image-to-image and inpainting renders start from."""

from __future__ import annotations

import numpy as np
import pytest


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two float images in [0, 1], in dB."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="session")
def init_image():
    """A smooth 256 px image to start image-to-image renders from."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    smooth = rng.random((16, 16, 3)) * 255
    return Image.fromarray(smooth.astype(np.uint8)).resize((256, 256), Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def square_mask():
    """A 256 px inpainting mask: the middle square (64 to 192) white."""
    from PIL import Image

    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    return mask
