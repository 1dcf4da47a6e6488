"""Wrong API keys throttled per client address (``ZOOMQ_KEY_ATTEMPTS``), so keys cannot be guessed
at the server's speed: after N wrong keys in a window, every key from that address is refused (429)
until the window ends, the right one included, so the refusal says nothing about the key. The count
is a fixed-window counter in Redis, shared by every web process; a request without a key costs no
Redis call. ``FixedWindow`` is the counter, shared with the submission rate limit."""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Request

from zoomq.errors import TooManyKeyAttempts
from zoomq.web.api_keys import Key, KeyRing

log = logging.getLogger(__name__)


def bearer(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer`` header, or None when there is none."""
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else None


class FixedWindow:
    """Counters by name in fixed windows of ``seconds``, kept in Redis under ``prefix`` (so every web
    process shares them); each counter expires with its window."""

    def __init__(self, client: redis.Redis, prefix: str, seconds: int):
        self.r, self.prefix, self.seconds = client, prefix, seconds

    def _window(self, name: str) -> tuple[str, float]:
        """This window's counter for ``name``, and the seconds until the window ends."""
        now = time.time()
        window = int(now // self.seconds)
        return f"{self.prefix}{name}:{window}", (window + 1) * self.seconds - now

    def used(self, name: str) -> tuple[int, float]:
        """The count of ``name`` in this window, and the seconds until the window ends."""
        key, left = self._window(name)
        return int(self.r.get(key) or 0), left

    def add(self, name: str) -> tuple[int, float]:
        """Count one for ``name``; returns the count in this window with it, and the seconds left."""
        key, left = self._window(name)
        with self.r.pipeline() as p:
            p.incr(key)
            p.expire(key, self.seconds + 1)
            used, _ = p.execute()
        return used, left


def wait_seconds(left: float) -> int:
    """The ``Retry-After`` of a window with ``left`` seconds to go: a whole second at least."""
    return max(1, math.ceil(left))


class KeyAttempts:
    """At most ``count`` wrong keys per client address in each window of ``seconds``; 0: no limit."""

    PREFIX = "zoomq:key-failures:"

    def __init__(self, client: redis.Redis, count: int, seconds: int):
        self.count, self.seconds = count, seconds
        self.window = FixedWindow(client, self.PREFIX, seconds)

    def check(self, address: str) -> None:
        """Raise ``TooManyKeyAttempts`` while ``address`` has used up its wrong keys of this window."""
        if not self.count:
            return
        try:
            used, left = self.window.used(address)
        except redis.RedisError as e:  # the key can still be checked: Redis is not needed for that
            log.warning("wrong-key throttle unavailable (%s): key attempts not counted", e)
            return
        if used >= self.count:
            wait = wait_seconds(left)
            raise TooManyKeyAttempts(f"too many wrong API keys from this address: at most {self.count} per "
                                     f"{self.seconds} s (ZOOMQ_KEY_ATTEMPTS); retry in {wait} s", wait)

    def failed(self, address: str) -> None:
        """Count one wrong key from ``address``."""
        if not self.count:
            return
        try:
            self.window.add(address)
        except redis.RedisError as e:
            log.warning("wrong-key throttle unavailable (%s): key attempt not counted", e)

    def key(self, ring: KeyRing, address: str, presented: str | None) -> Key | None:
        """The key ``presented`` (a header's or a form's) is, or None; a wrong one counts against
        ``address``, and an address past its limit is refused before the key is even looked at."""
        if not presented or not ring.enabled:
            return None
        self.check(address)
        found = ring.find(presented)
        if found is None:
            self.failed(address)
        return found
