"""Warm-up: a worker's models compiled for their default render before the first job, in the background."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.cluster import Worker, wait_for
from zoomq.config import settings
from zoomq.model import manifest as mf
from zoomq.queue import registry
from zoomq.render import precision, precompile
from zoomq.render.ov_models import CompiledParts
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest
from zoomq.worker import pieces
from zoomq.worker import warmup as worker_warmup


@pytest.mark.parametrize("task", ["t2i", "inpaint"])
def test_a_default_render_compiles_nothing_after_the_warm_up(task, tiny_t2i, tiny_inpaint, init_image, square_mask):
    folder = tiny_t2i if task == "t2i" else tiny_inpaint
    parts = CompiledParts(folder, precision.applied(settings()))
    precompile.compile_default(parts, mf.read(folder))
    warm = parts.compiled_shapes
    assert {part for part, _ in warm} >= {"text_encoder", "unet", "vae_decoder"}
    request = RenderRequest("a tower", steps=2, seed=4)
    if task == "inpaint":
        request = RenderRequest("a tower", steps=2, seed=4, init_image=init_image, mask=square_mask, strength=1.0)
    Renderer(folder, parts=parts).render(request)
    assert parts.compiled_shapes == warm


def test_renderer_refuses_parts_of_another_model(tiny_t2i, tiny_inpaint):
    with pytest.raises(ValueError, match="do not match"):
        Renderer(tiny_t2i, parts=CompiledParts(tiny_inpaint, precision.applied(settings())))


def test_a_worker_warms_only_the_models_it_renders(tiny_t2i, tiny_inpaint, monkeypatch):
    # Warming reads only the settings and the models: no Redis, job records, store or sender.
    ctx = pieces.Context(settings=settings(), redis=None, jobs=None, store=None, worker="w",  # type: ignore[arg-type]
                         models=registry.describe_models([tiny_t2i, tiny_inpaint]), send=None)  # type: ignore[arg-type]
    monkeypatch.delenv("ZOOMQ_WORKER_QUEUES", raising=False)
    assert worker_warmup.models_to_warm(ctx) == ["t2i", "inpaint"]  # plain `celery worker`: all it serves
    monkeypatch.setenv("ZOOMQ_WORKER_QUEUES", "render.inpaint,encode")
    assert worker_warmup.models_to_warm(ctx) == ["inpaint"]
    monkeypatch.setenv("ZOOMQ_WORKER_QUEUES", "encode")
    assert worker_warmup.start(ctx) == []


def test_worker_process_warms_up_at_start_without_a_job(tmp_path, tiny_t2i, tiny_inpaint, redis_server):
    server = redis_server(tmp_path / "redis")
    worker = Worker("warm", server.url, [tiny_t2i, tiny_inpaint], tmp_path)
    log = Path(worker.log.name)
    try:
        wait_for(lambda: all(line in log.read_text() for line in (
            "model t2i compiled for its default render", "model inpaint compiled for its default render",
            "render core imported")), 120, "the warm-up to be logged")
    finally:
        worker.stop()
        server.stop()
