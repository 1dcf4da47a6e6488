"""The work of each task, as plain functions: one image, one zoom keyframe, one segment, the stitch.

Every piece is idempotent — it first looks for its result in the artifact store and, if there,
only makes sure the pieces after it are enqueued. While it runs it holds a lease (a Redis key that
expires unless refreshed) and is listed in ``zoomq:running``; if its worker dies the lease lapses
and the watchdog hands the piece to another worker. Follow-up pieces are sent every time a piece
completes or is found complete: duplicates find their result stored, or the lease taken, and end.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis
from PIL import Image

from zoomq import logs
from zoomq.config import Settings
from zoomq.errors import ArtifactMissing, InvalidParameter, LeaseLost, ModelNotServed, PieceBusy, RenderCancelled
from zoomq.model import manifest as mf
from zoomq.producer import limits
from zoomq.queue import fair, stats, usage
from zoomq.queue.celery_app import TASK_IMAGE, TASK_KEYFRAME, TASK_SEGMENT, TASK_STITCH, render_queue
from zoomq.queue.job_records import CANCELLED, ENDED, PREVIEW_NAME, Jobs, watched_key
from zoomq.render import core_import, png, precision
from zoomq.render.ov_models import CompiledParts
from zoomq.render.request import RenderRequest, validate
from zoomq.repeating import repeating
from zoomq.storage.base import ArtifactStore
from zoomq.worker import guidance_split_redis
from zoomq.worker.lease import Lease
from zoomq.zoom.keyframe import keyframe_name, render_keyframe
from zoomq.zoom.segment import render_segment, segment_name
from zoomq.zoom.settings import ZoomSettings
from zoomq.zoom.settings import validate as validate_zoom
from zoomq.zoom.stitch import keyframe_entry, stitch

if TYPE_CHECKING:
    from zoomq.render.pipeline import Renderer
    from zoomq.render.preview import Preview

log = logging.getLogger(__name__)

@dataclass
class Context:
    """What a piece needs from its worker process; made once per process and shared by its render
    slots (threads): each piece keeps its own state (lease, progress, preview, UNet call), only the
    compiled models and renderers are shared."""

    settings: Settings
    redis: redis.Redis
    jobs: Jobs
    store: ArtifactStore
    worker: str
    models: dict[str, dict]
    send: Callable[[str, list, str], None]  # (task name, args, queue)
    slots: int = 1  # pieces this process renders at once: the compiled models' OpenVINO streams
    renderers: dict[str, Renderer] = field(default_factory=dict)
    parts: dict[str, CompiledParts] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _renderers_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _served(self, model: str) -> Path:
        if model not in self.models:
            raise ModelNotServed(model, list(self.models))
        return Path(self.models[model]["path"])

    def compiled_parts(self, model: str) -> CompiledParts:
        """The model's OpenVINO sub-models, shared by the warm-up and the renderer."""
        folder = self._served(model)
        with self._lock:
            if model not in self.parts:
                self.parts[model] = CompiledParts(mf.read(folder).folder, precision.applied(self.settings),
                                                  self.slots)
            return self.parts[model]

    def renderer(self, model: str) -> Renderer:
        """The model's renderer, one per process whatever its slots (its compiled models shared)."""
        parts = self.compiled_parts(model)
        with self._renderers_lock:
            if model not in self.renderers:
                # torch and diffusers: not before they are needed
                pipeline = core_import.import_render_core()
                self.renderers[model] = pipeline.Renderer(self._served(model), self.settings, parts)
            return self.renderers[model]


# -- leases and heartbeats ------------------------------------------------------------------

def _outcome(error: BaseException) -> str:
    """How a piece that raised ``error`` ended, for its log line."""
    if isinstance(error, LeaseLost):
        return "taken-over"
    if isinstance(error, PieceBusy):
        return "busy-elsewhere"
    if isinstance(error, RenderCancelled):
        return "cancelled"
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return "retrying"  # the task is retried with backoff
    if not isinstance(error, Exception):
        return "interrupted"  # the process is being shut down
    return "failed"


@contextmanager
def holding(ctx: Context, job_id: str, piece: str, task: str, args: list, queue: str) -> Iterator[Lease]:
    """Run a piece under its lease, refreshing lease and heartbeat from a thread. Logs the piece's
    start and end (with its outcome), and times it into the piece histogram when it completes."""
    about = {"job": job_id, "piece": piece, "worker": ctx.worker}
    logs.event(log, "piece started", logging.INFO, **about)
    started = time.monotonic()
    outcome = "failed"
    try:
        with _leased(ctx, job_id, piece, task, args, queue) as lease:
            yield lease
        outcome = "done"
    except BaseException as e:
        outcome = _outcome(e)
        raise
    finally:
        seconds = time.monotonic() - started
        if outcome == "done":
            try:
                stats.observe_piece(ctx.redis, piece, seconds)
                usage.count_piece(ctx.redis, job_id, piece, seconds)  # its owner's figures (GET /api/usage)
            except redis.RedisError as e:  # the piece is done all the same
                log.warning("could not record the time of %s: %s", piece, e)
        logs.event(log, "piece ended", logging.INFO, **about, seconds=round(seconds, 3), outcome=outcome)


@contextmanager
def _leased(ctx: Context, job_id: str, piece: str, task: str, args: list, queue: str) -> Iterator[Lease]:
    holder = f"{ctx.worker}:{threading.get_native_id()}:{time.time()}"
    entry = {"task": task, "args": args, "queue": queue, "worker": ctx.worker, "since": time.time()}
    lease = Lease.claim(ctx.redis, job_id, piece, holder, ctx.settings.stale_after, entry)
    # Segments encode beside the keyframe being rendered; they report their worker apart, so the
    # record's worker stays the one rendering (as its stage does).
    encoding = piece.startswith("segment")
    worker_field = "encode_worker" if encoding else "worker"
    ctx.jobs.start_piece(job_id, piece, ctx.worker, os.getpid(), encoding)

    def beat() -> None:
        try:
            if lease.held():
                ctx.redis.expire(lease.key, ctx.settings.stale_after)
                ctx.jobs.update(job_id, heartbeat=time.time(), **{worker_field: ctx.worker})
        except redis.RedisError as e:  # the task itself will meet the error; just keep beating
            log.warning("heartbeat of %s failed: %s", piece, e)

    done = False
    try:
        with repeating(ctx.settings.heartbeat, beat, f"heartbeat {piece}"):
            yield lease
        done = True  # the block ended normally: its result is written
    finally:
        lease.release(done)


def _progress(ctx: Context, job_id: str, piece: str, stage: str, what: str = "step"):
    """A render/segment progress callback that records units, times them and sees cancels."""
    field = "stage" if what == "step" else "encode_stage"
    last = [time.monotonic(), 0]

    def callback(done: int, total: int) -> bool:
        now = time.monotonic()
        if done > last[1]:
            ctx.jobs.measure(job_id, what, (now - last[0]) / (done - last[1]))
        last[:] = [now, done]
        ctx.jobs.progress(job_id, piece, done, stage=f"{stage} ({done}/{total})", stage_field=field)
        return ctx.jobs.state(job_id) != CANCELLED

    return callback


def _preview(ctx: Context, job_id: str, piece: str) -> Preview | None:
    """The live-preview hook for a render, or None when this worker makes none (ZOOMQ_PREVIEWS=off).
    It decodes only while the job is watched (``jobs.watched_key``, one Redis EXISTS per preview
    step), keeps the newest PNG as ``JOB/preview.png`` and counts it in the record's ``preview_step``."""
    if not ctx.settings.previews:
        return None
    from zoomq.render.preview import Preview  # torch: not before it is needed

    key = watched_key(job_id)

    def wanted() -> bool:
        try:
            return bool(ctx.redis.exists(key))
        except redis.RedisError:
            return False  # a preview is never worth failing a render for

    def sink(data: bytes, step: int, total: int) -> None:
        try:
            if ctx.jobs.state(job_id) in ENDED:
                return  # cancelled or purged meanwhile: nothing more is stored for it
            ctx.store.put(f"{job_id}/{PREVIEW_NAME}", data)
            ctx.jobs.update(job_id, preview_step=step, preview_piece=piece)
        except Exception as e:  # noqa: BLE001 — the store may be S3 or a folder; the render goes on
            log.warning("preview of %s %s not kept: %s", job_id, piece, e)

    return Preview(sink=sink, wanted=wanted)


def _unknown(params: dict, known: set[str], kind: str) -> None:
    for name in sorted(set(params) - known):
        raise InvalidParameter(name, params[name], f"is not {kind} parameter")


def _checked_image(ctx: Context, model: str, params: dict) -> RenderRequest:
    """The job's request, checked again with the producer's rules and this worker's ``ZOOMQ_MAX_*``
    limits: a record written into Redis by hand (bypassing the producer) is refused, not rendered."""
    _unknown(params, set(RenderRequest.__dataclass_fields__), "an image")
    request = RenderRequest(**params)
    ctx._served(model)  # ModelNotServed before anything is compiled
    info = ctx.models[model]
    checked = validate(request, info["task"], info["native_size"], info.get("latent_factor", 8), info.get("defaults"))
    limits.check_image(checked, limits.Limits.of(ctx.settings))
    return request


def _live(ctx: Context, job_id: str) -> dict | None:
    """The job's record if it still wants work done, else None."""
    job = ctx.jobs.get(job_id)
    if job is None or job["state"] in ENDED:
        return None
    return job


# -- image ----------------------------------------------------------------------------------

def run_image(ctx: Context, job_id: str) -> None:
    job = _live(ctx, job_id)
    if job is None:
        return
    key = f"{job_id}/result.png"
    if not ctx.store.exists(key):
        with holding(ctx, job_id, "image", TASK_IMAGE, [job_id], render_queue(job["model"])) as lease:
            params = dict(job["params"])
            for name in ("init_image", "mask"):
                if params.get(name):
                    data = ctx.store.get(params[name])
                    if data is None:
                        raise ArtifactMissing(f"{name} of job {job_id} is no longer in the artifact store")
                    params[name] = Image.open(io.BytesIO(data)).convert("L" if name == "mask" else "RGB")
            request = _checked_image(ctx, job["model"], params)
            renderer = ctx.renderer(job["model"])
            with guidance_split_redis.leading(ctx, job_id, "image", job["model"], params) as wrap_unet:
                result = renderer.render(request, _progress(ctx, job_id, "image", "denoising"),
                                         preview=_preview(ctx, job_id, "image"), wrap_unet=wrap_unet)
            lease.check()
            ctx.store.put(key, png.encode(result.image, result.recipe))
            ctx.jobs.update(job_id, recipe=json.dumps(result.recipe), warnings=json.dumps(result.warnings))
    ctx.jobs.finish(job_id, result=key, result_type="image/png")


# -- zoom -----------------------------------------------------------------------------------

@dataclass
class JobTexts:
    """A job's prompt embeddings in the artifact store: whichever worker needs a prompt first
    encodes it, the job's other workers load it."""

    store: ArtifactStore
    job_id: str
    #: Whether the job still wants work: embeddings of a cancelled or purged job are not stored.
    live: Callable[[], bool] = lambda: True

    def _key(self, text: str) -> str:
        return f"{self.job_id}/text-{hashlib.sha256(text.encode()).hexdigest()[:32]}.npy"

    def get(self, text: str) -> np.ndarray | None:
        data = self.store.get(self._key(text))
        return None if data is None else np.load(io.BytesIO(data), allow_pickle=False)

    def put(self, text: str, embeds: np.ndarray) -> None:
        key = self._key(text)
        if self.live() and not self.store.exists(key):
            buffer = io.BytesIO()
            np.save(buffer, embeds, allow_pickle=False)
            self.store.put(key, buffer.getvalue())


def _zoom(ctx: Context, job: dict) -> ZoomSettings:
    """The job's zoom settings, checked again (see ``_checked_image``) by every piece that reads them."""
    raw = job["params"].get("zoom")
    if not isinstance(raw, dict):
        raise InvalidParameter("zoom", type(raw).__name__, "must be the zoom settings the producer writes")
    _unknown(raw, set(ZoomSettings.__dataclass_fields__), "a zoom")
    try:
        settings = ZoomSettings.from_dict(raw)
    except TypeError as e:  # a schedule row with fields no PromptChange has
        raise InvalidParameter("schedule", raw.get("schedule"), f"is not a list of prompt changes ({e})") from None
    info = ctx.models.get(job["model"], {})  # an encode worker may not serve the model: steps are filled in
    limits.check_zoom(validate_zoom(settings, info.get("defaults")), limits.Limits.of(ctx.settings))
    return settings


def keyframe_key(job_id: str, k: int) -> str:
    return f"{job_id}/{keyframe_name(k)}"


def segment_key(job_id: str, k: int) -> str:
    return f"{job_id}/{segment_name(k)}"


def _fetch(ctx: Context, key: str, folder: Path) -> Path:
    path = folder / key.rsplit("/", 1)[-1]
    if not ctx.store.get_file(key, path):
        raise ArtifactMissing(f"{key} is missing from the artifact store")
    return path


def run_keyframe(ctx: Context, job_id: str, k: int) -> None:
    job = _live(ctx, job_id)
    if job is None:
        return
    settings = _zoom(ctx, job)
    key = keyframe_key(job_id, k)
    queue = render_queue(job["model"])
    if k and not ctx.store.exists(keyframe_key(job_id, k - 1)):
        return  # delivered early: keyframe k-1 sends this piece again when it is done
    if not ctx.store.exists(key):
        with holding(ctx, job_id, f"keyframe:{k}", TASK_KEYFRAME, [job_id, k], queue) as lease, \
                tempfile.TemporaryDirectory(prefix="zoomq-kf-") as tmp_dir:
            tmp = Path(tmp_dir)
            previous = _fetch(ctx, keyframe_key(job_id, k - 1), tmp) if k else None
            if k == 0 and settings.init_image:
                settings = ZoomSettings.from_dict({**settings.to_dict(),
                                                   "init_image": str(_fetch(ctx, settings.init_image, tmp))})
            out = tmp / keyframe_name(k)
            stage = f"keyframe {k + 1}/{settings.keyframes}"
            piece, params = f"keyframe:{k}", settings.to_dict()
            with guidance_split_redis.leading(ctx, job_id, piece, job["model"], params) as wrap_unet:
                render_keyframe(ctx.renderer(job["model"]), settings, k, previous, out,
                                _progress(ctx, job_id, f"keyframe:{k}", stage),
                                JobTexts(ctx.store, job_id, lambda: ctx.jobs.state(job_id) not in ENDED),
                                _preview(ctx, job_id, f"keyframe:{k}"), wrap_unet=wrap_unet)
            lease.check()
            ctx.store.put_file(key, out)
    assert settings.steps is not None  # validated at submission: the model's default filled in
    ctx.jobs.progress(job_id, f"keyframe:{k}", settings.steps)
    ctx.redis.sadd(f"zoomq:job:{job_id}:keyframes", k)
    ctx.jobs.update(job_id, keyframes_done=ctx.redis.scard(f"zoomq:job:{job_id}:keyframes"))
    if k:
        ctx.send(TASK_SEGMENT, [job_id, k - 1], "encode")
    if k + 1 < settings.keyframes:  # in its submitter's lane: a zoom's later keyframes wait their turn too
        fair.enqueue(ctx.redis, ctx.send, job["model"], job.get("submitter"), TASK_KEYFRAME, [job_id, k + 1], queue)


def run_segment(ctx: Context, job_id: str, k: int) -> None:
    job = _live(ctx, job_id)
    if job is None:
        return
    settings = _zoom(ctx, job)
    key = segment_key(job_id, k)
    if not ctx.store.exists(keyframe_key(job_id, k + 1)):
        return  # delivered early: keyframe k+1 sends this piece again when it is done
    if not ctx.store.exists(key):
        with holding(ctx, job_id, f"segment:{k}", TASK_SEGMENT, [job_id, k], "encode") as lease, \
                tempfile.TemporaryDirectory(prefix="zoomq-seg-") as tmp_dir:
            tmp = Path(tmp_dir)
            inner, outer = (_fetch(ctx, keyframe_key(job_id, i), tmp) for i in (k, k + 1))
            out = tmp / segment_name(k)
            stage = f"encoding segment {k + 1}/{settings.keyframes - 1}"
            frames = render_segment(inner, outer, settings, k, out,
                                    _progress(ctx, job_id, f"segment:{k}", stage, what="frame"))
            lease.check()
            ctx.store.put_file(key, out)
            ctx.jobs.progress(job_id, f"segment:{k}", frames, stage="", stage_field="encode_stage")
    ctx.send(TASK_STITCH, [job_id], "encode")  # it ends at once unless every segment is there


def run_stitch(ctx: Context, job_id: str) -> None:
    job = _live(ctx, job_id)
    if job is None:
        return
    settings = _zoom(ctx, job)
    key = f"{job_id}/result.mp4"
    if not all(ctx.store.exists(segment_key(job_id, k)) for k in range(settings.keyframes - 1)):
        return  # delivered early: the last segment sends this piece again when it is done
    if not ctx.store.exists(key):
        with holding(ctx, job_id, "stitch", TASK_STITCH, [job_id], "encode") as lease, \
                tempfile.TemporaryDirectory(prefix="zoomq-stitch-") as tmp_dir:
            tmp = Path(tmp_dir)
            ctx.jobs.update(job_id, stage="stitching")
            segments = [_fetch(ctx, segment_key(job_id, k), tmp) for k in range(settings.keyframes - 1)]
            keyframes = []
            for k in range(settings.keyframes):
                path = _fetch(ctx, keyframe_key(job_id, k), tmp)
                keyframes.append(keyframe_entry(k, png.read_recipe(path), keyframe_name(k)))
            model = {"name": job["model"], "sha256": ctx.models.get(job["model"], {}).get("sha256")}
            out = tmp / "result.mp4"
            sidecar = stitch(segments, settings, out, keyframes, model)
            lease.check()
            if settings.gif:
                ctx.store.put_file(f"{job_id}/result.gif", out.with_suffix(".gif"))
            ctx.store.put(f"{job_id}/sidecar.json", json.dumps(sidecar, indent=2).encode())
            ctx.store.put_file(key, out)  # last: its presence means the whole result is there
    ctx.jobs.finish(job_id, result=key, result_type="video/mp4", sidecar=f"{job_id}/sidecar.json",
                    gif=f"{job_id}/result.gif" if settings.gif else "")


#: Each piece's task name → the function that runs it: ``(ctx, job_id, *args)``.
PIECES: dict[str, Callable[..., None]] = {
    TASK_IMAGE: run_image, TASK_KEYFRAME: run_keyframe, TASK_SEGMENT: run_segment, TASK_STITCH: run_stitch,
}

