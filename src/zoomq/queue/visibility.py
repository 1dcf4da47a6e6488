"""Keeps the broker from handing out a task its worker still holds, however long the task runs.

kombu's Redis transport notes each message it delivers unacknowledged in the ``unacked_index``
sorted set, scored by delivery time, and gives it to another consumer once that time is older than
the visibility timeout. A worker's main process therefore moves the time of every message it holds
(running, reserved, or waiting out a countdown) forward at each heartbeat; a worker that dies stops,
and its messages come back after the timeout (besides the watchdog's leases, which notice sooner).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

#: kombu's ``unacked_index_key`` (zoomq sets no ``global_keyprefix``, so the name is kombu's default).
UNACKED_INDEX = "unacked_index"


def renew(client: redis.Redis, tags: Iterable[str], now: float) -> int:
    """Mark the messages ``tags`` delivered at ``now``, in one pipeline of ``ZADD XX``: only those
    still in the index (an acknowledged or given-back message is not brought back). Returns how many."""
    tags = list(tags)
    if not tags:
        return 0
    with client.pipeline(transaction=False) as p:
        for tag in tags:
            p.zadd(UNACKED_INDEX, {tag: now}, xx=True, ch=True)
        return sum(p.execute())


def transport_options(visibility_timeout: int) -> dict:
    """kombu's sweep for messages past the timeout, every quarter of it (1 to 60 s) rather than its
    default of about 100 s, so a short timeout is honoured; each sweep is a few Redis commands."""
    return {"unacked_restore_interval": min(60, max(1, visibility_timeout // 4)), "unacked_restore_throttle": 1}
