"""Uploads shrink to what the render needs: an init image or mask is stored at the render's size,
resized as the renderer resizes it, so the stored picture renders the very same pixels; the
4096x4096 refusal limit stays."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest
from zoomq.zoom.keyframe import render_keyframe
from zoomq.zoom.settings import ZoomSettings, validate


def _smooth(width: int, height: int, seed: int = 7) -> Image.Image:
    """A large picture with detail at every scale that a JPEG keeps small (the 16 MiB upload limit)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).resize((width, height),
                                                                                      Image.Resampling.BICUBIC)
    grain = rng.integers(0, 24, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(np.asarray(coarse) // 2 + grain)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _mask(width: int, height: int) -> Image.Image:
    """White (repaint) in an off-centre ellipse: its edge goes through the resize's filter."""
    mask = Image.new("L", (width, height), 0)
    from PIL import ImageDraw

    ImageDraw.Draw(mask).ellipse((width // 5, height // 4, width * 3 // 4, height * 4 // 5), fill=255)
    return mask


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _stored(client, job_id: str, name: str, mode: str) -> Image.Image:
    """The upload as the worker reads it back from the store."""
    key = client.producer.jobs.get(job_id)["params"][name]
    data = client.producer.store.get(key)
    assert data is not None
    return Image.open(io.BytesIO(data)).convert(mode)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return _jpeg(_smooth(4096, 4096))


def test_a_4096_init_image_for_a_512_render_is_stored_at_512(client, big_jpeg):
    job = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i", "width": 512,
                                         "height": 512, "strength": 0.6, "init_image": _b64(big_jpeg)})
    assert job.status_code == 202, job.get_json()
    stored = _stored(client, job.get_json()["id"], "init_image", "RGB")
    assert stored.size == (512, 512)
    # An image job with no size asked renders at the init image's size: within the limit, kept as is.
    kept = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i", "strength": 0.6,
                                          "init_image": _b64(_jpeg(_smooth(640, 384)))}).get_json()["id"]
    assert _stored(client, kept, "init_image", "RGB").size == (640, 384)


def test_the_refusal_limit_stays(client):
    refused = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i", "width": 512,
                                             "height": 512, "init_image": _b64(_jpeg(_smooth(4097, 4096)))})
    assert refused.status_code == 400
    assert refused.get_json()["errors"][0] == {"field": "init_image", "value": "4097x4096",
                                               "rule": "is too large; at most 4096x4096 pixels"}


def test_a_shrunk_init_image_renders_the_same_pixels(client, big_jpeg, tiny_t2i):
    original = Image.open(io.BytesIO(big_jpeg)).convert("RGB")
    job = client.post("/api/jobs", json={"kind": "image", "prompt": "a harbour", "model": "t2i", "width": 192,
                                         "height": 128, "strength": 0.7, "steps": 4, "seed": 5,
                                         "init_image": _b64(big_jpeg)}).get_json()["id"]
    stored = _stored(client, job, "init_image", "RGB")
    assert stored.size == (192, 128)
    renderer = Renderer(tiny_t2i)
    request = RenderRequest("a harbour", steps=4, seed=5, width=192, height=128, strength=0.7)
    from_original = renderer.render(replace(request, init_image=original))
    from_stored = renderer.render(replace(request, init_image=stored))
    assert np.array_equal(from_original.pixels, from_stored.pixels)


def test_a_shrunk_mask_and_image_inpaint_the_same_pixels(client, tiny_inpaint):
    image, mask = _smooth(2048, 1536, seed=3), _mask(2048, 1536)
    png = io.BytesIO()
    mask.save(png, format="PNG")
    job = client.post("/api/jobs", json={"kind": "image", "prompt": "a door", "model": "inpaint", "width": 128,
                                         "height": 96, "steps": 3, "seed": 9, "init_image": _b64(_jpeg(image)),
                                         "mask": _b64(png.getvalue())}).get_json()["id"]
    stored_image, stored_mask = _stored(client, job, "init_image", "RGB"), _stored(client, job, "mask", "L")
    assert stored_image.size == stored_mask.size == (128, 96)
    original = Image.open(io.BytesIO(_jpeg(image))).convert("RGB")
    renderer = Renderer(tiny_inpaint)
    request = RenderRequest("a door", steps=3, seed=9, width=128, height=96)
    from_original = renderer.render(replace(request, init_image=original, mask=mask))
    from_stored = renderer.render(replace(request, init_image=stored_image, mask=stored_mask))
    assert np.array_equal(from_original.pixels, from_stored.pixels)


def test_a_zoom_init_image_is_stored_as_keyframe_0_uses_it(client, tiny_inpaint, tmp_path: Path):
    wide = _smooth(3000, 2000, seed=11)
    job = client.post("/api/jobs", json={"kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 2,
                                         "size": 128, "mask_width": 32,
                                         "init_image": _b64(_jpeg(wide))}).get_json()["id"]
    key = client.producer.jobs.get(job)["params"]["zoom"]["init_image"]
    stored = client.producer.store.get(key)
    assert stored is not None and Image.open(io.BytesIO(stored)).size == (128, 128)
    (tmp_path / "original.jpg").write_bytes(_jpeg(wide))
    (tmp_path / "stored.png").write_bytes(stored)
    renderer = Renderer(tiny_inpaint)
    frames = []
    for name in ("original.jpg", "stored.png"):
        settings = validate(ZoomSettings(prompt="x", keyframes=2, size=128, mask_width=32,
                                         init_image=str(tmp_path / name)))
        render_keyframe(renderer, settings, 0, None, tmp_path / f"k0-{name}.png")
        frames.append(np.asarray(Image.open(tmp_path / f"k0-{name}.png").convert("RGB")))
    assert np.array_equal(frames[0], frames[1])
