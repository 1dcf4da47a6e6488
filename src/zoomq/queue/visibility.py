"""Keeps the broker from handing out a task its worker still holds, however long the task runs.

kombu's Redis transport notes each message it delivers unacknowledged in the ``unacked_index``
sorted set, scored by delivery time, and gives it to another consumer once that time is older than
the visibility timeout. A worker's main process therefore moves the time of every message it holds
(running, or waiting out a countdown) forward at each heartbeat; a worker that dies stops, and its
messages come back after the timeout (besides the watchdog's leases, which notice sooner).
"""

from __future__ import annotations

import threading
import time

import redis

#: kombu's ``unacked_index_key`` (zoomq sets no ``global_keyprefix``, so the name is kombu's default).
UNACKED_INDEX = "unacked_index"


class HeldMessages:
    """The delivery tags of the broker messages this worker process holds. ``add`` as each arrives;
    ``refresh`` marks them all delivered now and forgets those acknowledged (or given back) since."""

    def __init__(self) -> None:
        self._tags: set[str] = set()
        self._lock = threading.Lock()  # added by the consumer's loop, refreshed from the heartbeat thread

    def add(self, tag: str) -> None:
        with self._lock:
            self._tags.add(tag)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tags)

    def refresh(self, client: redis.Redis) -> int:
        """One pipeline of ``ZADD XX`` (only tags still in the index: an acknowledged message is not
        brought back); returns how many are still held."""
        with self._lock:
            tags = list(self._tags)
        if not tags:
            return 0
        now = time.time()
        with client.pipeline(transaction=False) as p:
            for tag in tags:
                p.zadd(UNACKED_INDEX, {tag: now}, xx=True, ch=True)
            changed = p.execute()
        gone = [tag for tag, moved in zip(tags, changed, strict=True) if not moved]
        with self._lock:
            self._tags.difference_update(gone)
        return len(tags) - len(gone)


def transport_options(visibility_timeout: int) -> dict:
    """kombu's sweep for messages past the timeout, every quarter of it (1 to 60 s) rather than its
    default of about 100 s, so a short timeout is honoured; each sweep is three Redis commands."""
    return {"unacked_restore_interval": min(60, max(1, visibility_timeout // 4)), "unacked_restore_throttle": 1}
