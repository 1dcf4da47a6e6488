"""Hands the pieces of a lost worker to others.

A running piece keeps its lease alive; when its whole node dies nothing can requeue its task, and
Redis would only hand the message out again after the visibility timeout (hours). Every worker
scans ``zoomq:running`` a few times a minute — one at a time, under a short lock — and sends again
each piece whose lease has lapsed while its job still wants it, and tokens for lane entries that
have none (``fair.top_up``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import redis

from zoomq.queue import connection, fair, stats
from zoomq.queue.celery_app import render_queue
from zoomq.queue.job_records import ENDED, Jobs
from zoomq.worker.lease import RUNNING_PIECES, lease_key

log = logging.getLogger(__name__)
LOCK = "zoomq:watchdog"


def scan(client: redis.Redis, jobs: Jobs, send: Callable[[str, list, str], None], stale_after: int,
         me: str, interval: float) -> list[str]:
    """One pass; returns the pieces sent again (``job|piece``)."""
    if not client.set(LOCK, me, nx=True, ex=max(1, int(interval))):
        return []
    resent = []
    for field, raw in client.hgetall(RUNNING_PIECES).items():
        field = connection.text(field)
        job_id, piece = field.split("|", 1)
        state = jobs.state(job_id)
        if state is None or state in ENDED:
            client.hdel(RUNNING_PIECES, field)
            continue
        if client.exists(lease_key(job_id, piece)):
            continue
        entry = json.loads(raw)
        if time.time() - entry.get("resent", 0) < stale_after:
            continue  # sent again recently; give that task time to start
        entry["resent"] = time.time()
        client.hset(RUNNING_PIECES, field, json.dumps(entry))
        log.warning("%s of job %s lost its worker %s; sending it again", piece, job_id, entry.get("worker"))
        send(entry["task"], entry["args"], entry["queue"])
        stats.count_piece_resent(client, piece)
        resent.append(field)
    if fair.top_up(client, send, render_queue):
        log.warning("lane entries without a token found; tokens sent for them")
    return resent
