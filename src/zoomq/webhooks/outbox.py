"""Webhook deliveries waiting in Redis, their schedule of retries, and the attempts each job shows.

A delivery is a hash (its job, URL, event and signed body, the same on every attempt) and a member
of ``DUE``, a sorted set by the time it is due. Whoever delivers claims due ones (``claim_due``),
which pushes them ``lease`` seconds ahead, so one lost while being sent is due again then; after an
attempt (``deliver``) it is gone (2xx, a refused address, or no retries left) or due again after the
next pause of the backoff. The schedule lives here rather than in task countdowns, which Redis would
hand out again after the broker's visibility timeout. Every attempt is appended to the job's list.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import redis

from zoomq.errors import InvalidParameter
from zoomq.queue.connection import text
from zoomq.webhooks import address, send, signing

DUE = "zoomq:webhooks:due"
#: Pauses before each retry after a failed attempt: about 5 s, 30 s, 2 min, 10 min, 1 h.
BACKOFF = (5.0, 30.0, 120.0, 600.0, 3600.0)
LEASE = 120.0  # longer than an attempt: resolving plus send.TIMEOUT
KEEP_ATTEMPTS = 50
EVENTS = {"running": "job.started", "done": "job.done", "failed": "job.failed", "cancelled": "job.cancelled"}


def _delivery(delivery_id: str) -> str:
    return f"zoomq:webhook:{delivery_id}"


def attempts_key(job_id: str) -> str:
    return f"zoomq:job:{job_id}:webhooks"


def enqueue(client: redis.Redis, job_id: str, url: str, event: str, data: dict, now: float | None = None) -> str:
    """A delivery of ``event`` with ``data`` (the job's public record) to ``url``, due now; its id."""
    now = time.time() if now is None else now
    delivery_id = "msg_" + uuid.uuid4().hex
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
    body = json.dumps({"type": event, "timestamp": stamp, "data": data}, separators=(",", ":"))
    with client.pipeline() as p:
        p.hset(_delivery(delivery_id), mapping={"job": job_id, "url": url, "event": event, "body": body,
                                                "attempt": 0})
        p.zadd(DUE, {delivery_id: now})
        p.execute()
    return delivery_id


_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


def claim_due(client: redis.Redis, lease: float = LEASE, limit: int = 50, now: float | None = None) -> list[str]:
    """The ids of deliveries due now, each pushed ``lease`` seconds ahead (atomically: one claimer each)."""
    now = time.time() if now is None else now
    ids = client.eval(_CLAIM, 1, DUE, repr(now), repr(now + lease), limit)
    return [text(i) for i in ids]


def deliver(client: redis.Redis, delivery_id: str, secret: str, allow: frozenset[str],
            backoff: tuple[float, ...] = BACKOFF, ttl: int = 604800, timeout: float = send.TIMEOUT) -> dict | None:
    """One attempt of the delivery, recorded on its job; the attempt's record, or None when the
    delivery is gone (delivered, or given up, by another attempt)."""
    raw = client.hgetall(_delivery(delivery_id))
    if not raw:
        client.zrem(DUE, delivery_id)
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    number = int(fields["attempt"]) + 1
    body = fields["body"].encode()
    retry = True
    try:
        if not secret:
            raise InvalidParameter("ZOOMQ_WEBHOOK_SECRET", "", "is not set on the delivering worker")
        target = address.check_url(fields["url"], allow)
        ip = address.resolve(target, allow)
        outcome = send.post(target, ip, body, signing.headers(secret, delivery_id, int(time.time()), body), timeout)
    except InvalidParameter as e:  # refused: trying again would be refused again
        outcome, retry = send.Outcome(None, str(e)), False
    now = time.time()
    again = retry and not outcome.ok and number <= len(backoff)
    next_retry = now + backoff[number - 1] if again else None
    record = {"id": delivery_id, "event": fields["event"], "attempt": number, "time": now,
              "status": outcome.status, "error": outcome.error, "next_retry": next_retry}
    key = attempts_key(fields["job"])
    with client.pipeline() as p:
        p.rpush(key, json.dumps(record))
        p.ltrim(key, -KEEP_ATTEMPTS, -1)
        p.expire(key, ttl)
        if next_retry is not None:
            p.hset(_delivery(delivery_id), "attempt", number)
            p.zadd(DUE, {delivery_id: next_retry})
        else:
            p.delete(_delivery(delivery_id))
            p.zrem(DUE, delivery_id)
        p.execute()
    return record


def attempts(client: redis.Redis, job_id: str) -> list[dict]:
    """The job's delivery attempts, oldest first (the newest ``KEEP_ATTEMPTS``)."""
    return parse_attempts(client.lrange(attempts_key(job_id), 0, -1))


def add_attempts(p: redis.client.Pipeline, job_id: str) -> None:
    """Queue the read of ``attempts`` on the pipeline ``p`` (a list of jobs read in one round trip);
    ``parse_attempts`` turns its reply into the attempts."""
    p.lrange(attempts_key(job_id), 0, -1)  # at most KEEP_ATTEMPTS: the list is trimmed at each attempt


def parse_attempts(items: list) -> list[dict]:
    return [json.loads(item) for item in items]
