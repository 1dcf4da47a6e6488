"""Live previews (issue #16): the render's preview hook, the worker's watched-only previews, and
``GET /api/jobs/ID/preview``."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import numpy as np
import pytest
import redis
from PIL import Image

from zoomq.config import settings
from zoomq.model import manifest as mf
from zoomq.queue import registry
from zoomq.queue.job_records import PREVIEW_NAME, Jobs, watched_key
from zoomq.render.pipeline import Renderer
from zoomq.render.preview import LATENT_RGB_FACTORS, Preview, linear_rgb
from zoomq.render.request import RenderRequest
from zoomq.storage import open_store
from zoomq.worker import pieces


def _collect(renderer: Renderer, request: RenderRequest, **options):
    made = []

    def sink(data, step, total):
        made.append((step, total, Image.open(io.BytesIO(data))))

    result = renderer.render(request, preview=Preview(sink=sink, **{"budget": None, **options}))
    return made, result


def _counting(renderer: Renderer, part: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls of ``part`` that ``renderer`` makes from now on, as they happen."""
    calls: list[str] = []
    run = renderer.parts.run

    def counting(name, **inputs):
        if name == part:
            calls.append(name)
        return run(name, **inputs)

    monkeypatch.setattr(renderer.parts, "run", counting)
    return calls


def test_linear_previews_at_every_nth_step_at_latent_size_enlarged(tiny_t2i):
    renderer = Renderer(tiny_t2i)
    assert "tiny" not in renderer.decoders
    request = RenderRequest("a red door", steps=7, seed=5, width=128, height=96)
    made, result = _collect(renderer, request, every=3)
    assert [(step, total) for step, total, _ in made] == [(3, 7), (6, 7)]  # not the last: the result follows
    scale = 256 // (128 // 8)
    assert all(image.mode == "RGB" and image.size == (128 // 8 * scale, 96 // 8 * scale) for *_, image in made)
    # the previews do not change the render
    assert np.array_equal(result.pixels, renderer.render(request).pixels)


def test_linear_map_is_the_documented_factors():
    latents = np.zeros((1, 4, 2, 2), np.float32)
    latents[0, 3] = -1.0  # channel 3 alone: minus its row of factors
    pixels = np.asarray(linear_rgb(latents, max_side=2))
    expected = np.round(np.clip((1 - LATENT_RGB_FACTORS[3]) / 2, 0, 1) * 255)
    assert pixels.shape == (2, 2, 3) and np.array_equal(pixels[0, 0], expected.astype(np.uint8))


def test_tiny_autoencoder_previews_at_full_size(tiny_t2i_taesd, monkeypatch):
    renderer = Renderer(tiny_t2i_taesd)
    assert "tiny" in renderer.decoders
    calls = _counting(renderer, mf.TINY_DECODER, monkeypatch)
    made, _ = _collect(renderer, RenderRequest("a red door", steps=4, seed=5, width=128, height=128), every=1)
    assert [step for step, _, _ in made] == [1, 2, 3]
    assert all(image.size == (128, 128) for *_, image in made)
    assert len(calls) == 3  # the render's own decode is the full VAE's


def test_no_preview_decoded_while_unwanted(tiny_t2i_taesd, monkeypatch):
    renderer = Renderer(tiny_t2i_taesd)
    calls = _counting(renderer, mf.TINY_DECODER, monkeypatch)
    asked = []

    def wanted() -> bool:
        asked.append(1)
        return False

    made, _ = _collect(renderer, RenderRequest("a red door", steps=4, seed=5, width=64, height=64), every=1,
                       wanted=wanted)
    assert made == [] and calls == [] and len(asked) == 3  # asked once per preview step, nothing decoded


def test_previews_keep_within_their_share_of_the_render(tiny_t2i):
    """A preview that took long is followed by none until the render has run 1/budget times as long."""
    renderer = Renderer(tiny_t2i)

    def slow(data, step, total):
        time.sleep(0.2)

    hook = Preview(sink=slow, every=1, budget=0.03)
    renderer.render(RenderRequest("a red door", steps=6, seed=5, width=64, height=64), preview=hook)
    assert hook.made == 1 and hook.skipped == 4  # the miniature's steps are far shorter than 0.2 s / 3 %


# -- the worker and the web ----------------------------------------------------------------------

@pytest.fixture
def worker_ctx(make_client, server, tiny_t2i, tiny_inpaint):
    """(web test client, make_context(**settings)) on one private Redis; contexts render in-process."""
    client = make_client()

    def context(**overrides):
        s = replace(settings(), redis_url=server.url, **overrides)
        r = redis.Redis.from_url(s.redis_url)
        return pieces.Context(settings=s, redis=r, jobs=Jobs(r, s.job_ttl), store=open_store(s, r), worker="w1@test",
                              models=registry.describe_models([tiny_t2i, tiny_inpaint]), send=lambda *task: None)

    return client, context


def _submit(client) -> str:
    body = {"kind": "image", "prompt": "x", "model": "t2i", "steps": 4, "width": 64, "height": 64}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_worker_makes_previews_only_while_the_job_is_watched(worker_ctx):
    client, context = worker_ctx
    ctx = context()
    unwatched = _submit(client)
    pieces.run_image(ctx, unwatched)
    assert ctx.jobs.get(unwatched)["state"] == "done"
    assert not ctx.store.exists(f"{unwatched}/{PREVIEW_NAME}") and "preview_step" not in ctx.jobs.get(unwatched)
    assert client.get(f"/api/jobs/{unwatched}/preview").status_code == 404  # ended without one
    assert not ctx.redis.exists(watched_key(unwatched))  # and an ended job is not marked watched

    watched = _submit(client)
    assert client.get(f"/api/jobs/{watched}/preview").status_code == 204  # none yet; now watched
    assert ctx.redis.ttl(watched_key(watched)) > 0
    pieces.run_image(ctx, watched)
    record = ctx.jobs.get(watched)
    assert record["state"] == "done" and record["preview_step"] == 3 and record["preview_piece"] == "image"
    response = client.get(f"/api/jobs/{watched}/preview")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers["Cache-Control"] == "no-store"
    assert Image.open(io.BytesIO(response.data)).size == (256, 256)  # linear: 8×8 latents, ×32

    off = context(previews=False)
    third = _submit(client)
    client.get(f"/api/jobs/{third}/preview")
    pieces.run_image(off, third)
    assert not ctx.store.exists(f"{third}/{PREVIEW_NAME}")


def test_preview_url_while_running_and_the_token_guards_it(make_client):
    client = make_client(api_token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    job_id = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"},
                         headers=auth).get_json()["id"]
    assert client.get(f"/api/jobs/{job_id}", headers=auth).get_json()["preview_url"] is None  # queued
    client.producer.jobs.start_piece(job_id, "image", "w1@test", 1)
    status = client.get(f"/api/jobs/{job_id}", headers=auth).get_json()
    assert status["state"] == "running" and status["preview_url"] == f"/api/jobs/{job_id}/preview"
    assert client.get(status["preview_url"]).status_code == 401
    empty = client.get(status["preview_url"], headers=auth)
    assert empty.status_code == 204 and empty.data == b"" and empty.headers["Cache-Control"] == "no-store"
    s = client.application.extensions["zoomq"].settings
    open_store(s, client.producer.redis).put(f"{job_id}/{PREVIEW_NAME}", b"\x89PNG fake")
    response = client.get(status["preview_url"], headers=auth)
    assert response.status_code == 200 and response.data == b"\x89PNG fake"
    assert client.get("/api/jobs/00000000-0000-4000-8000-000000000000/preview", headers=auth).status_code == 404


def test_a_watched_keyframe_gets_previews(worker_ctx):
    client, context = worker_ctx
    ctx = context()
    body = {"kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 2, "size": 128, "mask_width": 32,
            "steps": 4}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    job_id = response.get_json()["id"]
    client.get(f"/api/jobs/{job_id}/preview")
    pieces.run_keyframe(ctx, job_id, 0)
    record = ctx.jobs.get(job_id)
    assert record["preview_piece"] == "keyframe:0" and record["preview_step"] == 3
    preview = client.get(f"/api/jobs/{job_id}/preview")
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.data)).size == (256, 256)
