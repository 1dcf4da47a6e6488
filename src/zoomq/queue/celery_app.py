"""The Celery application, configured for long CPU tasks on Redis.

Late acknowledgement with prefetch 1 and requeue on worker loss, so a task whose process dies is
given to another worker; JSON only; a visibility timeout that a task held by a live worker never
reaches, however long it runs (``queue.visibility``), so Redis never hands out a task still running.
Work is split over two queues — ``render`` (images, keyframes) and ``encode`` (segments, stitching) —
so a node can serve either or both.
"""

from __future__ import annotations

from celery import Celery

from zoomq import config
from zoomq.config import Settings
from zoomq.queue import visibility
from zoomq.queue.connection import broker_url, celery_options

RENDER_QUEUE, ENCODE_QUEUE = "render", "encode"

TASK_IMAGE, TASK_KEYFRAME, TASK_SEGMENT, TASK_STITCH = (
    "zoomq.image", "zoomq.keyframe", "zoomq.segment", "zoomq.stitch",
)
#: An offer to run the unconditional half of a guided render (``worker.split``).
TASK_SPLIT = "zoomq.split"
ROUTES = {
    TASK_IMAGE: RENDER_QUEUE,
    TASK_KEYFRAME: RENDER_QUEUE,
    TASK_SEGMENT: ENCODE_QUEUE,
    TASK_STITCH: ENCODE_QUEUE,
}


def render_queue(model: str) -> str:
    """The queue of render tasks for one model: only workers holding that model listen to it."""
    return f"render.{model}"


def split_queue(model: str) -> str:
    """The queue of guidance-split offers for one model: every worker of that model consumes it,
    and an idle one takes an offer at once (``worker.split``)."""
    return f"split.{model}"


def make_app(s: Settings | None = None) -> Celery:
    s = s or config.settings()
    app = Celery("zoomq", broker=broker_url(s))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in job records and the artifact store
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_routes={name: {"queue": queue} for name, queue in ROUTES.items()},
        task_default_queue=RENDER_QUEUE,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
        **celery_options(s),  # visibility timeout, the clients' timeouts, TLS, Sentinel's master name
    )
    # kombu's sweep for messages past the timeout runs often enough to honour a short one.
    app.conf.broker_transport_options.update(visibility.transport_options(s.visibility_timeout))
    return app
