"""A worker process's warm-up: its models compiled and its render core imported before the first job.

Started in each pool process as it starts (after the fork: no OpenVINO before it) and run in the
background, so the process takes tasks at once; a task that needs a model still compiling waits for
it. Two threads overlap the two costs: OpenVINO compiles (releasing the GIL) while Python imports
torch and diffusers (holding it). Measured on the full-size model, 2 cores: alone the imports take
about 3 s and the compile 2.5 s; side by side, 4.6 s and 5.5 s.
"""

from __future__ import annotations

import logging
import threading
import time

from zoomq.config import worker_identity
from zoomq.model import manifest as mf
from zoomq.queue.celery_app import render_queue
from zoomq.render import core_import, precompile, schedulers
from zoomq.worker.pieces import Context

log = logging.getLogger(__name__)


def models_to_warm(ctx: Context) -> list[str]:
    """The served models this process renders: those whose queue the worker listens to (all of
    them when it was started without ``zoomq worker``, which records its queues)."""
    listened = set(worker_identity().queues)
    if not listened:
        return list(ctx.models)
    return [m for m in ctx.models if render_queue(m) in listened]


def _compile(ctx: Context, models: list[str]) -> None:
    for model in models:
        start = time.perf_counter()
        try:
            parts = ctx.compiled_parts(model)
            precompile.compile_default(parts, mf.read(parts.folder))
        except Exception:  # the job that needs the model will fail with the reason; the worker lives on
            log.exception("warm-up of model %s failed", model)
        else:
            log.info("model %s compiled for its default render in %.1f s", model, time.perf_counter() - start)


def _import_render_core(ctx: Context, models: list[str], encodes_images: bool) -> None:
    start = time.perf_counter()
    try:
        pipeline = core_import.import_render_core()
        if encodes_images:
            pipeline.import_image_encoding()
        for model in models:
            # Its renderer, and its scheduler made once: diffusers' from_config imports the module of
            # every scheduler compatible with it (scipy too), 0.6 s that the first render would wait for.
            schedulers.make("default", ctx.renderer(model).scheduler_config)
    except Exception:  # the first render imports it again and reports the error there
        log.exception("importing the render core or making a renderer failed")
    else:
        log.info("render core imported in %.1f s", time.perf_counter() - start)


def start(ctx: Context) -> list[threading.Thread]:
    """Start the warm-up of ``ctx``'s models in the background; returns its threads."""
    models = models_to_warm(ctx)
    if not models:
        return []
    inpainting = any(ctx.models[m]["task"] == "inpainting" for m in models)
    log.info("warm-up of %s begins: compiling and importing the render core at once", ", ".join(models))
    threads = [threading.Thread(target=_compile, args=(ctx, models), name="zoomq warm-up", daemon=True),
               threading.Thread(target=_import_render_core, args=(ctx, models, inpainting), name="zoomq imports",
                                daemon=True)]
    for t in threads:
        t.start()
    return threads
