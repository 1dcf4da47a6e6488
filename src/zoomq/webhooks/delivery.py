"""The webhook worker: ``zoomq worker --queues webhooks``, a light Celery worker with a thread pool
and no models, so a slow receiver never holds a render slot.

Its main process polls the outbox (``outbox.claim_due``) and sends each due delivery as a task on
the ``webhooks`` queue; a pool thread makes the attempt (``outbox.deliver``). Several such workers
may run: a claim is atomic, and a delivery lost with its worker is due again after the lease.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import redis
from celery import signals

from zoomq import config
from zoomq.config import worker_identity
from zoomq.queue import connection, registry
from zoomq.queue.celery_app import make_app
from zoomq.webhooks import outbox

log = logging.getLogger("zoomq.webhooks")
app = make_app()
WEBHOOK_QUEUE = "webhooks"
TASK_DELIVER = "zoomq.webhook"
POLL = 0.2  # seconds between looks at the outbox


@app.task(name=TASK_DELIVER, ignore_result=True)
def deliver(delivery_id: str) -> None:
    s = config.settings()
    with connection.client(s) as client:
        record = outbox.deliver(client, delivery_id, s.webhook_secret, s.webhook_allow, s.webhook_backoff, s.job_ttl)
    if record is not None:
        log.info("webhook %s %s attempt %d: %s", delivery_id, record["event"], record["attempt"],
                 record["status"] or record["error"])


_stop = threading.Event()


@signals.worker_ready.connect
def _start_polling(sender=None, **_) -> None:
    s = config.settings()
    client = connection.client(s)
    identity = worker_identity()
    info = {"models": {}, "queues": list(identity.queues) or [WEBHOOK_QUEUE], "concurrency": identity.processes}

    def loop() -> None:
        next_announce = 0.0
        while not _stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_announce:
                    registry.announce(client, identity.name, info, s.heartbeat)
                    if s.health_file:  # for container health checks, as the render workers do
                        Path(s.health_file).touch()
                    next_announce = now + s.heartbeat
                for delivery_id in outbox.claim_due(client):
                    app.send_task(TASK_DELIVER, args=[delivery_id], queue=WEBHOOK_QUEUE)
            except redis.RedisError as e:
                log.warning("cannot reach Redis for webhooks: %s", e)
            _stop.wait(POLL)

    threading.Thread(target=loop, name="zoomq webhooks", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_polling(**_) -> None:
    _stop.set()
    try:
        registry.withdraw(connection.client(config.settings()), worker_identity().name)
    except redis.RedisError:
        pass
