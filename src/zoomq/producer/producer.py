"""Submit jobs, read their status, cancel them and fetch their results.

Parameters are validated here, with the same rules and words as the in-process renders, before
anything is enqueued; images a job starts from go to the artifact store, and the task carries only
the job id.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from PIL import Image

from zoomq import config
from zoomq.config import Settings
from zoomq.errors import Checks, InvalidParameter, QueueFull, ZoomqError
from zoomq.producer import estimate, limits, retention
from zoomq.queue import connection, fair, job_records, registry, stats, usage
from zoomq.queue.celery_app import ENCODE_QUEUE, TASK_IMAGE, TASK_KEYFRAME, make_app, render_queue
from zoomq.render.png import load_image
from zoomq.render.request import RenderRequest, at_render_size, check_cache, check_decoder, validate
from zoomq.storage import open_store
from zoomq.storage.base import Artifact
from zoomq.webhooks import address
from zoomq.zoom.geometry import fit_init_image
from zoomq.zoom.settings import ZoomSettings, parse_schedule
from zoomq.zoom.settings import validate as validate_zoom

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ImageInput = Image.Image | bytes | str | Path | None
#: Retry-After, in seconds, of a submission refused because a queue is full: about the time a
#: miniature job takes and a fraction of a full-size one, so clients neither hammer nor stall.
RETRY_FULL_QUEUE = 30


class Producer:
    def __init__(self, s: Settings | None = None):
        self.settings = s or config.settings()
        self.redis = connection.client(self.settings, socket_connect_timeout=5, socket_timeout=30)
        self.jobs = job_records.Jobs(self.redis, self.settings.job_ttl)
        self.store = open_store(self.settings, self.redis)
        self.limits = limits.Limits.of(self.settings)
        self._app: Celery | None = None

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoPermissionError, OperationalError) as e:
            raise connection.unavailable(e, self.settings) from None

    def _send(self, task: str, args: list, queue: str) -> None:
        if self._app is None:
            self._app = make_app(self.settings)
        self._app.send_task(task, args=args, queue=queue)
        registry.note_queue(self.redis, queue)  # so health and /metrics find it without a SCAN

    def _enqueue(self, task: str, args: list, job_id: str, kind: str, model: str, params: dict, work_total: int,
                 *, owner: str | None, submitter: str | None, **extra) -> None:
        """Record the job with its indexes and put its first piece in the submitter's lane in one
        transaction (one round trip), then send the piece's token (``fair.enqueue``'s order: the
        lane entry first)."""
        with self.redis.pipeline() as p:
            self.jobs.add_create(p, job_id, kind, model, params, work_total, owner=owner, submitter=submitter,
                                 **extra)
            fair.add_push(p, model, submitter, task, args)
            p.execute()
        self._send(fair.TASK_NEXT, [model], render_queue(model))

    def workers(self) -> list[dict]:
        return self._call(registry.live_workers, self.redis)

    def models(self) -> dict[str, dict]:
        """Model name → description, over the live workers."""
        return registry.served_models(self.workers())

    def _model(self, model: str) -> dict | None:
        if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
            raise InvalidParameter("model", model, "must be a model name (letters, digits, . _ -)")
        return self.models().get(model)

    def _put_image(self, job_id: str, name: str, image: Image.Image) -> str:
        key = f"{job_id}/{name}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self._call(self.store.put, key, buffer.getvalue())
        return key

    # -- submitting ------------------------------------------------------------------------

    def check_image(self, prompt: str, *, model: str, init_image: ImageInput = None, mask: ImageInput = None,
                    **options) -> RenderRequest:
        """The validated request ``submit_image`` would enqueue; raises ``InvalidParameter(s)``."""
        checks = Checks()
        info = checks(self._model, model)
        init = checks(_as_image, init_image, "init_image", "RGB")
        mask_image = checks(_as_image, mask, "mask", "L")
        task = info["task"] if info else ("inpainting" if mask_image is not None else "text-to-image")
        for name in sorted(set(options) - set(RenderRequest.__dataclass_fields__)):
            checks.add(InvalidParameter(name, options[name], "is not an image parameter"))
        options = {k: v for k, v in options.items() if k in RenderRequest.__dataclass_fields__}
        request = checks(validate, RenderRequest(prompt=prompt, init_image=init, mask=mask_image, **options),
                         task, info["native_size"] if info else 512, (info or {}).get("latent_factor", 8),
                         (info or {}).get("defaults"))  # the model's steps and guidance for those left out
        if request is not None:
            checks(limits.check_image, request, self.limits)
            if info:  # refused here, not by a worker: a model announced without TAESD has decoder "full" only
                checks(check_decoder, request.decoder, tuple(info.get("decoders", ("full",))))
                checks(check_cache, request.cache_interval, request.cache_branch, _cache_branches(info))
        checks.raise_errors()
        return request.with_seed()

    def estimate_image(self, prompt: str, *, model: str, **options) -> dict:
        """What ``submit_image`` would cost, validated like it and enqueueing nothing."""
        return self._estimate("image", model, estimate.image_work(self.check_image(prompt, model=model, **options)))

    def submit_image(self, prompt: str, *, model: str, init_image: ImageInput = None, mask: ImageInput = None,
                     owner: str | None = None, submitter: str | None = None, webhook: str | None = None,
                     **options) -> str:
        """Enqueue one image (text-to-image, image-to-image with ``init_image``, inpainting with
        ``mask``); ``options`` are ``RenderRequest`` fields. ``owner``: the API key the job belongs
        to; ``submitter``: who its queue cap counts against. Returns the job id."""
        request = self.check_image(prompt, model=model, init_image=init_image, mask=mask, **options)
        hook = self.check_webhook(webhook)
        self.admit(submitter)
        request = at_render_size(request)  # stored as the render will use them, not at the upload's size
        job_id = job_records.new_id()
        params = {k: v for k, v in asdict(request).items() if k not in ("init_image", "mask")}
        if request.init_image is not None:
            params["init_image"] = self._put_image(job_id, "init", request.init_image)
        if request.mask is not None:
            params["mask"] = self._put_image(job_id, "mask", request.mask)
        work = estimate.image_work(request)
        self._call(self._enqueue, TASK_IMAGE, [job_id], job_id, "image", model, params, work.denoising_steps,
                   owner=owner, submitter=submitter, unet_per_step=work.unet_per_step, megapixels=work.megapixels,
                   cache_interval=request.cache_interval, **hook)
        return job_id

    def check_zoom(self, prompt: str, *, model: str, init_image: ImageInput = None, schedule=None,
                   **options) -> tuple[ZoomSettings, Image.Image | None]:
        """The validated settings (and init image) ``submit_zoom`` would enqueue."""
        checks = Checks()
        info = checks(self._model, model)  # any model zooms: a text-to-image one by latent blending
        accepted = set(ZoomSettings.__dataclass_fields__) - {"warnings"}  # warnings are validate()'s to write
        for name in sorted(set(options) - accepted - {"schedule", "init_image"}):
            checks.add(InvalidParameter(name, options[name], "is not a zoom parameter"))
        options = {k: v for k, v in options.items() if k in accepted}
        init = checks(_as_image, init_image, "init_image", "RGB")
        parsed = checks(parse_schedule, schedule) if schedule is not None else ()  # 0, "" or {} is no list
        settings = checks(validate_zoom, ZoomSettings(prompt=prompt, schedule=parsed or (), **options),
                          (info or {}).get("defaults"))
        if settings is not None:
            checks(limits.check_zoom, settings, self.limits)
            if info:
                checks(check_decoder, settings.decoder, tuple(info.get("decoders", ("full",))))
                checks(check_cache, settings.cache_interval, settings.cache_branch, _cache_branches(info))
        checks.raise_errors()
        return settings, init

    def estimate_zoom(self, prompt: str, *, model: str, **options) -> dict:
        """What ``submit_zoom`` would cost, validated like it and enqueueing nothing."""
        settings, init = self.check_zoom(prompt, model=model, **options)
        return self._estimate("zoom", model, estimate.zoom_work(settings, init is not None))

    def _estimate(self, kind: str, model: str, work: estimate.Work) -> dict:
        seconds, basis = estimate.expected_seconds(work, model, self._call(stats.read_rates, self.redis, model))
        return {"dry_run": True, "kind": kind, "model": model, "work": work.to_dict(), "expected_seconds": seconds,
                "basis": basis, "queued_ahead": self._call(self.jobs.queued)}

    def check_webhook(self, url: str | None) -> dict:
        """The job record's ``webhook`` field for ``url`` (none for None), checked by the SSRF guard;
        refused while no ``ZOOMQ_WEBHOOK_SECRET`` is set, rather than sent unsigned."""
        if url is None:
            return {}
        if not self.settings.webhook_secret:
            raise InvalidParameter("webhook", url, "webhooks are off here: the operator has not set "
                                   "ZOOMQ_WEBHOOK_SECRET; submit without a webhook")
        address.check_url(url, self.settings.webhook_allow)
        return {"webhook": url}

    def admit(self, submitter: str | None) -> None:
        """Raise ``QueueFull`` when the queue, or ``submitter``'s share of it, is at its cap.
        Checked before enqueueing, not with it: concurrent submissions may pass the cap by a few."""
        s = self.settings
        per_key = bool(submitter and s.max_queued_per_key)
        if not (s.max_queued or per_key):
            return
        queued, unfinished = self._call(self._load, submitter if per_key else None)
        if s.max_queued and queued >= s.max_queued:
            raise QueueFull(f"the queue is full: {s.max_queued} jobs are waiting (ZOOMQ_MAX_QUEUED); "
                            f"retry in {RETRY_FULL_QUEUE} s", 503, RETRY_FULL_QUEUE)
        if per_key and unfinished >= s.max_queued_per_key:
            raise QueueFull(f"you have {s.max_queued_per_key} unfinished jobs, the most one submitter may have "
                            f"(ZOOMQ_MAX_QUEUED_PER_KEY); retry when one ends, in about {RETRY_FULL_QUEUE} s",
                            429, RETRY_FULL_QUEUE)

    def _load(self, submitter: str | None) -> tuple[int, int]:
        """Jobs queued in the cluster and ``submitter``'s unfinished ones (0 for None), in one round trip."""
        with self.redis.pipeline(transaction=False) as p:
            p.zcard(self.jobs.QUEUED_SET)
            if submitter:
                p.zcard(self.jobs.unfinished_set(submitter))
            counts = p.execute()
        return int(counts[0]), int(counts[1]) if submitter else 0

    def submit_zoom(self, prompt: str, *, model: str, init_image: ImageInput = None, schedule=None,
                    owner: str | None = None, submitter: str | None = None, webhook: str | None = None,
                    **options) -> str:
        """Enqueue an infinite-zoom video; ``options`` are ``ZoomSettings`` fields, ``schedule`` a
        list of ``{"keyframe": k, "prompt": ..., "negative_prompt": ...}``; ``owner`` and
        ``submitter`` as for ``submit_image``. Returns the job id."""
        settings, init = self.check_zoom(prompt, model=model, init_image=init_image, schedule=schedule, **options)
        hook = self.check_webhook(webhook)
        self.admit(submitter)
        work = estimate.zoom_work(settings, init is not None)
        job_id = job_records.new_id()
        if init is not None:  # stored as keyframe 0 will use it, not at the upload's size
            fitted = fit_init_image(init, settings.size)
            settings = ZoomSettings.from_dict(
                {**settings.to_dict(), "init_image": self._put_image(job_id, "init", fitted)}
            )
        self._call(self._enqueue, TASK_KEYFRAME, [job_id, 0], job_id, "zoom", model, {"zoom": settings.to_dict()},
                   work.denoising_steps + settings.total_frames, owner=owner, submitter=submitter,
                   unet_per_step=work.unet_per_step, megapixels=work.megapixels,
                   cache_interval=settings.cache_interval, keyframes_total=settings.keyframes,
                   frames_total=settings.total_frames, keyframes_done=0, **hook)
        return job_id

    # -- following -------------------------------------------------------------------------

    def status(self, job_id: str) -> dict:
        """The job record, with the liveness of its worker and a warning when nobody serves its model."""
        record = self._call(self.jobs.get, job_records.check_id(job_id))
        if record is None:
            raise InvalidParameter("job_id", job_id, "no such job (unknown, or expired)")
        workers = self.workers()
        record["worker_alive"] = (
            any(w["name"] == record.get("worker") for w in workers) if record.get("worker") else None
        )
        served = registry.served_models(workers)
        record["warning"] = None
        if record["state"] == job_records.QUEUED and record["model"] not in served:
            names = ", ".join(sorted(served)) or "none"
            record["warning"] = f"no worker online serves model {record['model']!r} (served now: {names})"
        elif record["kind"] == "zoom" and record["state"] == job_records.RUNNING and not any(
                ENCODE_QUEUE in w.get("queues", []) for w in workers):
            record["warning"] = "no worker online serves the encode queue; segments will wait"
        return record

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not ended (False if it had). Its uploads (init image, mask) are
        deleted at once; what it made so far stays readable until its record expires."""
        job_id = job_records.check_id(job_id)
        cancelled = self._call(self.jobs.cancel, job_id)
        if cancelled:
            self._call(retention.drop_uploads, job_id, self.stores())
        return cancelled

    def stores(self) -> list:
        """Every store a job's artifacts may be in (``retention.stores``)."""
        return retention.stores(self.settings, self.redis, self.store)

    def purge(self, job_id: str) -> dict:
        """Cancel the job if it runs and delete every artifact and upload of it, whatever its state;
        its record stays, marked ``purged``, until it expires. ``InvalidParameter`` for no such job."""
        self.status(job_id)
        return self._call(retention.purge, self.redis, self.jobs, job_records.check_id(job_id), self.stores())

    def usage(self, identities: list[str] | None = None) -> dict[str, dict[str, float]]:
        """What each key identity has used (``queue.usage``): every identity counted, or only
        ``identities`` (zeros where nothing was counted)."""
        if identities is None:
            return self._call(usage.read_all, self.redis)
        return self._call(usage.read, self.redis, identities)

    def watch(self, job_id: str) -> None:
        """Someone looks at the job: its worker makes live previews for the next few seconds."""
        self._call(self.redis.set, job_records.watched_key(job_records.check_id(job_id)), 1,
                   ex=job_records.WATCHED_SECONDS)

    def preview(self, job_id: str, watch: bool = True) -> bytes | None:
        """The job's newest live preview (PNG), marking it watched; None while there is none."""
        if watch:
            self.watch(job_id)
        return self.artifact(job_id, job_records.PREVIEW_NAME)

    def artifact(self, job_id: str, name: str) -> bytes | None:
        return self._call(self.store.get, f"{job_records.check_id(job_id)}/{name}")

    def open_artifact(self, job_id: str, name: str) -> Artifact | None:
        """The artifact to stream (``Artifact.chunks``), read a chunk at a time: a video is never whole
        in memory."""
        return self._call(self.store.open, f"{job_records.check_id(job_id)}/{name}")

    def result(self, job_id: str) -> bytes:
        record = self.status(job_id)
        if record["state"] != job_records.DONE:
            raise ZoomqError(f"job {job_id} is {record['state']}, not done"
                             + (f": {record['error']}" if record.get("error") else ""))
        if record.get("purged") is not None:
            raise ZoomqError(f"job {job_id} was purged: its result and uploads are deleted")
        data = self._call(self.store.get, record["result"])
        if data is None:
            raise ZoomqError(f"the result of job {job_id} has expired from the artifact store")
        return data

    def wait(self, job_id: str, on_update: Callable[[dict], None] | None = None, poll: float = 0.5,
             timeout: float | None = None) -> dict:
        """Poll until the job ends; returns its final record."""
        started = time.monotonic()
        while True:
            record = self.status(job_id)
            if on_update:
                on_update(record)
            if record["state"] in job_records.ENDED:
                return record
            if timeout is not None and time.monotonic() - started > timeout:
                raise ZoomqError(f"job {job_id} did not end within {timeout:g} s")
            time.sleep(poll)


def _cache_branches(info: dict) -> tuple[int, ...] | None:
    """The DeepCache branches a served model carries; None where its workers do not say (older ones)."""
    branches = info.get("cache_branches")
    return None if branches is None else tuple(branches)


def _as_image(value, param: str, mode: str) -> Image.Image | None:
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert(mode)
    if isinstance(value, (bytes, bytearray)):
        return load_image(io.BytesIO(value), param, mode)
    return load_image(value, param, mode)


def submit_image(prompt: str, **kwargs) -> str:
    return Producer().submit_image(prompt, **kwargs)


def submit_zoom(prompt: str, **kwargs) -> str:
    return Producer().submit_zoom(prompt, **kwargs)


def status(job_id: str) -> dict:
    return Producer().status(job_id)


def cancel(job_id: str) -> bool:
    return Producer().cancel(job_id)


def result(job_id: str) -> bytes:
    return Producer().result(job_id)
