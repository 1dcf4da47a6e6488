"""Submit jobs, read their status, cancel them and fetch their results.

Parameters are validated here, with the same rules and words as the in-process renders, before
anything is enqueued; images a job starts from go to the artifact store, and the task carries only
the job id.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Union

import redis
from kombu.exceptions import OperationalError
from PIL import Image

from zoomq import connection
from zoomq import jobs as jobs_mod
from zoomq.config import Settings, settings as current_settings
from zoomq.connection import BrokerUnavailable  # noqa: F401  (re-exported: the web answers it with 503)
from zoomq.errors import Checks, InvalidParameter, ZoomqError
from zoomq.render.png import load_image
from zoomq.render.request import RenderRequest, validate
from zoomq.store import open_store
from zoomq.worker import registry
from zoomq.worker.app import ENCODE_QUEUE, TASK_IMAGE, TASK_KEYFRAME, make_app, render_queue
from zoomq.zoom.settings import ZoomSettings, parse_schedule, validate as validate_zoom

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ImageInput = Union[Image.Image, bytes, str, Path, None]


class Producer:
    def __init__(self, s: Settings | None = None):
        self.settings = s or current_settings()
        self.redis = connection.client(self.settings, socket_connect_timeout=5, socket_timeout=30)
        self.jobs = jobs_mod.Jobs(self.redis, self.settings.job_ttl)
        self.store = open_store(self.settings, self.redis)
        self._app = None

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
                         task, info["native_size"] if info else 512, (info or {}).get("latent_factor", 8))
        checks.raise_errors()
        return request.with_seed()

    def submit_image(self, prompt: str, *, model: str, init_image: ImageInput = None, mask: ImageInput = None,
                     **options) -> str:
        """Enqueue one image (text-to-image, image-to-image with ``init_image``, inpainting with
        ``mask``); ``options`` are ``RenderRequest`` fields. Returns the job id."""
        request = self.check_image(prompt, model=model, init_image=init_image, mask=mask, **options)
        job_id = jobs_mod.new_id()
        params = {k: v for k, v in asdict(request).items() if k not in ("init_image", "mask")}
        if request.init_image is not None:
            params["init_image"] = self._put_image(job_id, "init", request.init_image)
        if request.mask is not None:
            params["mask"] = self._put_image(job_id, "mask", request.mask)
        steps = request.steps if request.mode == "text-to-image" else min(int(request.steps * request.strength),
                                                                           request.steps)
        self._call(self.jobs.create, job_id, "image", model, params, steps)
        self._call(self._send, TASK_IMAGE, [job_id], render_queue(model))
        return job_id

    def check_zoom(self, prompt: str, *, model: str, init_image: ImageInput = None, schedule=None,
                   **options) -> tuple[ZoomSettings, Image.Image | None]:
        """The validated settings (and init image) ``submit_zoom`` would enqueue."""
        checks = Checks()
        info = checks(self._model, model)
        if info and info["task"] != "inpainting":
            checks.add(InvalidParameter("model", model, "is a text-to-image model; zoom needs an inpainting model"))
        accepted = set(ZoomSettings.__dataclass_fields__) - {"warnings"}  # warnings are validate()'s to write
        for name in sorted(set(options) - accepted - {"schedule", "init_image"}):
            checks.add(InvalidParameter(name, options[name], "is not a zoom parameter"))
        options = {k: v for k, v in options.items() if k in accepted}
        init = checks(_as_image, init_image, "init_image", "RGB")
        parsed = checks(parse_schedule, schedule) if schedule else ()
        settings = checks(validate_zoom, ZoomSettings(prompt=prompt, schedule=parsed or (), **options))
        checks.raise_errors()
        return settings, init

    def submit_zoom(self, prompt: str, *, model: str, init_image: ImageInput = None, schedule=None,
                    **options) -> str:
        """Enqueue an infinite-zoom video; ``options`` are ``ZoomSettings`` fields, ``schedule`` a
        list of ``{"keyframe": k, "prompt": ..., "negative_prompt": ...}``. Returns the job id."""
        settings, init = self.check_zoom(prompt, model=model, init_image=init_image, schedule=schedule, **options)
        job_id = jobs_mod.new_id()
        if init is not None:
            settings = ZoomSettings.from_dict({**settings.to_dict(), "init_image": self._put_image(job_id, "init", init)})
        rendered = settings.keyframes - (1 if init is not None else 0)
        self._call(self.jobs.create, job_id, "zoom", model, {"zoom": settings.to_dict()},
                   rendered * settings.steps + settings.total_frames,
                   keyframes_total=settings.keyframes, frames_total=settings.total_frames, keyframes_done=0)
        self._call(self._send, TASK_KEYFRAME, [job_id, 0], render_queue(model))
        return job_id

    # -- following -------------------------------------------------------------------------

    def status(self, job_id: str) -> dict:
        """The job record, with the liveness of its worker and a warning when nobody serves its model."""
        record = self._call(self.jobs.get, jobs_mod.check_id(job_id))
        if record is None:
            raise InvalidParameter("job_id", job_id, "no such job (unknown, or expired)")
        workers = self.workers()
        record["worker_alive"] = any(w["name"] == record.get("worker") for w in workers) if record.get("worker") else None
        served = registry.served_models(workers)
        record["warning"] = None
        if record["state"] == jobs_mod.QUEUED and record["model"] not in served:
            names = ", ".join(sorted(served)) or "none"
            record["warning"] = f"no worker online serves model {record['model']!r} (served now: {names})"
        elif record["kind"] == "zoom" and record["state"] == jobs_mod.RUNNING and not any(
                ENCODE_QUEUE in w.get("queues", []) for w in workers):
            record["warning"] = "no worker online serves the encode queue; segments will wait"
        return record

    def cancel(self, job_id: str) -> bool:
        return self._call(self.jobs.cancel, jobs_mod.check_id(job_id))

    def artifact(self, job_id: str, name: str) -> bytes | None:
        return self._call(self.store.get, f"{jobs_mod.check_id(job_id)}/{name}")

    def result(self, job_id: str) -> bytes:
        record = self.status(job_id)
        if record["state"] != jobs_mod.DONE:
            raise ZoomqError(f"job {job_id} is {record['state']}, not done"
                             + (f": {record['error']}" if record.get("error") else ""))
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
            if record["state"] in jobs_mod.ENDED:
                return record
            if timeout is not None and time.monotonic() - started > timeout:
                raise ZoomqError(f"job {job_id} did not end within {timeout:g} s")
            time.sleep(poll)


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
