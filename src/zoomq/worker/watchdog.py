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

# Mark an entry sent again only if it is still the one read and its piece still has no lease: a
# piece that ended (or was taken) meanwhile removed or replaced it, and writing the stale copy back
# would have it sent again every stale period until its job ends (seen in the fleet soak).
_MARK = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    return 1
end
return 0
"""


def mark_resent(client: redis.Redis, field: str, read: bytes | str, entry: dict, lease: str) -> bool:
    """Write ``entry`` over the running entry ``field`` if it still holds ``read`` and ``lease`` is
    unheld; False when the piece ended or moved on meanwhile (then it is not sent again)."""
    return bool(client.eval(_MARK, 2, RUNNING_PIECES, lease, field, read, json.dumps(entry)))


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
        if not mark_resent(client, field, raw, entry, lease_key(job_id, piece)):
            continue
        log.warning("%s of job %s lost its worker %s; sending it again", piece, job_id, entry.get("worker"))
        send(entry["task"], entry["args"], entry["queue"])
        stats.count_piece_resent(client, piece)
        resent.append(field)
    if fair.top_up(client, send, render_queue):
        log.warning("lane entries without a token found; tokens sent for them")
    return resent
