"""Celery tasks: thin wrappers that run a piece and turn its outcome into job state.

``celery -A zoomq.worker.tasks worker`` works as well as ``zoomq worker``. A piece that fails ends
its job with a short category and message for users (``failures.public_error``), the full text in
the worker's log; a lost broker connection is retried with backoff; a
piece whose lease another worker holds is tried again a little later.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import redis
from celery import signals
from celery.exceptions import Reject
from celery.worker import state as worker_state
from kombu.exceptions import OperationalError

from zoomq import config, logs
from zoomq.config import worker_identity
from zoomq.errors import ArtifactStoreUnreachable, PieceBusy, RenderCancelled, ZoomqError
from zoomq.producer import retention
from zoomq.queue import connection, fair, job_records, registry, stats, visibility
from zoomq.queue.celery_app import TASK_IMAGE, TASK_KEYFRAME, TASK_SEGMENT, TASK_SPLIT, TASK_STITCH, make_app
from zoomq.storage import open_store
from zoomq.worker import guidance_split_redis, pieces, warmup, watchdog
from zoomq.worker.failures import public_error

log = logging.getLogger("zoomq.worker")
app = make_app()
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, OperationalError, ArtifactStoreUnreachable)

_context: pieces.Context | None = None
_context_lock = threading.Lock()  # render slots are threads: the first piece of each asks at once


def worker_name() -> str:
    return worker_identity().name


_sender: redis.Redis | None = None


def send(task: str, args: list, queue: str) -> None:
    global _sender
    app.send_task(task, args=args, queue=queue)
    if _sender is None:
        _sender = connection.client(config.settings())
    registry.note_queue(_sender, queue)  # so health and /metrics find it without a SCAN


def context() -> pieces.Context:
    """This process's context, made on first use (after the fork: no OpenVINO before it)."""
    global _context
    with _context_lock:
        if _context is None:
            s = config.settings()
            client = connection.client(s)
            _context = pieces.Context(
                settings=s,
                redis=client,
                jobs=job_records.Jobs(client, s.job_ttl),
                store=open_store(s, client),
                worker=worker_name(),
                models=registry.describe_models(list(s.models)),
                send=send,
                slots=worker_identity().slots,
            )
        return _context


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger=None, **_) -> None:
    """Under ``celery worker``, Celery's own handlers log JSON too when ``ZOOMQ_LOG_FORMAT=json``
    (``zoomq worker`` has set logging up before Celery starts, and Celery keeps it). Pool processes
    are forked from this one and inherit it."""
    if logger is not None and logs.current_format() == "json":
        for handler in logger.handlers:
            handler.setFormatter(logs.JsonFormatter())


@signals.celeryd_init.connect
def _banner(instance=None, **_) -> None:
    """No start-up banner when logging JSON: every line of the output is then one JSON object."""
    if instance is not None and logs.current_format() == "json":
        instance.quiet = True


@signals.worker_process_init.connect
def _warm_up(**_) -> None:
    """Each pool process compiles its models in the background as it starts (``ZOOMQ_WARMUP``).
    A worker with render slots (a threads pool, no pool processes) warms up in ``_start_background``."""
    if config.settings().warmup:
        warmup.start(context())


def _run(task, piece: str, job_id: str, *args) -> None:
    ctx = context()
    try:
        pieces.PIECES[piece](ctx, job_id, *args)
    except PieceBusy:
        stats.count_piece_busy(ctx.redis, piece)
        raise task.retry(countdown=max(2, ctx.settings.heartbeat), max_retries=None) from None  # retry() raises
    except RenderCancelled:
        log.info("job %s cancelled", job_id)
    except TRANSIENT:
        raise  # autoretry_for: backoff and try again
    except ZoomqError as e:
        log.error("job %s: %s failed: %s", job_id, piece, e)  # the full text here; the job gets its category
        stats.count_piece_failed(ctx.redis, piece)  # counted first: the job's end is what watchers wait for
        ctx.jobs.fail(job_id, public_error(e, _model(ctx, job_id)))
    except Exception as e:  # a bug or a broken model: the job says so, the worker lives on
        log.exception("job %s: %s failed", job_id, piece)
        stats.count_piece_failed(ctx.redis, piece)
        ctx.jobs.fail(job_id, public_error(e, _model(ctx, job_id)))


def _model(ctx: pieces.Context, job_id: str) -> str:
    """The job's model, for its error; '' when the record cannot be read."""
    try:
        job = ctx.jobs.get(job_id)
    except redis.RedisError:
        return ""
    return str(job.get("model", "")) if job else ""


class _Requeuing(app.Task):  # type: ignore[name-defined]  # Celery's app-bound Task class
    """A task whose retry could not be sent (Redis away, or loading its AOF after a restart) goes
    back to its queue: Celery would drop it (``Reject(requeue=False)``), losing the job's piece.
    Given back failing too, it stays unacknowledged and returns after the visibility timeout."""

    def retry(self, *args, **kwargs):
        try:
            return super().retry(*args, **kwargs)
        except Reject as e:
            if e.requeue:
                raise
            log.warning("could not send the retry of %s (%s); giving it back to its queue", self.name, e.reason)
            raise Reject(e.reason, requeue=True) from None


_OPTIONS = dict(base=_Requeuing, bind=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60,
                retry_jitter=True, max_retries=30)


@app.task(name=TASK_IMAGE, **_OPTIONS)
def image(self, job_id: str) -> None:
    _run(self, TASK_IMAGE, job_id)


@app.task(name=TASK_KEYFRAME, **_OPTIONS)
def keyframe(self, job_id: str, k: int) -> None:
    _run(self, TASK_KEYFRAME, job_id, k)


@app.task(name=TASK_SEGMENT, **_OPTIONS)
def segment(self, job_id: str, k: int) -> None:
    _run(self, TASK_SEGMENT, job_id, k)


@app.task(name=TASK_STITCH, **_OPTIONS)
def stitch(self, job_id: str) -> None:
    _run(self, TASK_STITCH, job_id)


@app.task(name=fair.TASK_NEXT, **_OPTIONS)
def next_piece(self, model: str) -> None:
    """A token: render the next fair piece of ``model`` (``queue.fair``). Its claim is kept under
    the task id, which Celery keeps across retries and redeliveries, so a token delivered again
    resumes its own piece; no piece waiting (one the watchdog already sent again) is no work."""
    ctx = context()
    claimed = fair.claim(ctx.redis, model, self.request.id)
    if claimed is None:
        return
    piece = claimed["piece"]
    _run(self, piece["task"], *piece["args"])  # a retry raises here, and the claim stays for it
    fair.release(ctx.redis, self.request.id)


@app.task(name=TASK_SPLIT)
def split_help(sid: str) -> None:
    """Run the unconditional halves of another worker's render (``worker.split``). Best effort:
    on any failure the leader goes on alone, so nothing is retried."""
    ctx = context()
    if not ctx.settings.guidance_split:
        return
    try:
        guidance_split_redis.help_render(ctx, sid)
    except Exception:  # noqa: BLE001 — the leader notices and carries on alone; this worker lives on
        log.exception("helping split %s failed", sid)


# -- the worker's main process: announce models, watch for lost pieces -------------------------

_stop = threading.Event()


def _held_tags() -> list[str]:
    """The delivery tags of the messages this worker holds unacknowledged: running, reserved, or
    waiting out a countdown (Celery's own records; after a lost connection it forgets those it can
    no longer acknowledge, and so do we). Read from another thread: a set that changes is read again."""
    for _ in range(10):
        try:
            requests = [*worker_state.reserved_requests, *worker_state.scheduled_requests]
            break
        except RuntimeError:  # changed size while being read
            continue
    else:
        return []
    return [r.message.delivery_tag for r in requests if not r.acknowledged]


@signals.worker_ready.connect
def _start_background(sender=None, **_):
    s = config.settings()
    client = connection.client(s)
    identity = worker_identity()
    name = identity.name
    models = registry.describe_models(list(s.models))
    info = {"models": models, "queues": list(identity.queues), "concurrency": identity.processes,
            "slots": identity.slots, "threads": s.threads}
    if identity.slots > 1 and s.warmup:  # the slots are this process's threads: it renders, so it warms up
        warmup.start(context())
    jobs = job_records.Jobs(client, s.job_ttl)
    interval = max(2.0, s.stale_after / 4)
    where = retention.stores(s, client)

    def loop() -> None:
        next_scan = 0.0
        while not _stop.is_set():
            try:
                registry.announce(client, name, info, s.heartbeat)
                if s.health_file:  # for container health checks: fresh while Redis hears from us
                    Path(s.health_file).touch()
                if time.monotonic() >= next_scan:
                    watchdog.scan(client, jobs, send, s.stale_after, name, interval)
                    next_scan = time.monotonic() + interval
                    retention.sweep_if_due(jobs, where, name, s.sweep_interval)  # one worker per period
            except ZoomqError as e:  # a store unreachable: the expired jobs stay due for the next sweep
                log.warning("retention sweep: %s", e)
            except redis.RedisError as e:
                log.warning("cannot reach Redis for heartbeat: %s", e)
            _stop.wait(s.heartbeat)

    def keep_held() -> None:  # apart from loop(): a long watchdog scan or sweep must not delay it
        while not _stop.wait(s.heartbeat):
            try:
                visibility.renew(client, _held_tags(), time.time())
            except redis.RedisError as e:
                log.warning("cannot reach Redis to keep held tasks: %s", e)

    threading.Thread(target=loop, name="zoomq heartbeat", daemon=True).start()
    threading.Thread(target=keep_held, name="zoomq held tasks", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_background(**_):
    _stop.set()
    try:
        registry.withdraw(connection.client(config.settings()), worker_name())
    except redis.RedisError:
        pass
