"""The web front end's guards: who the caller is (an API key, or an anonymous address), CSRF
tokens for the forms, the session key shared by every web process, and the submission rate limit
kept in Redis (per key, or per address without one)."""

from __future__ import annotations

import hmac
import math
import secrets
import time
from dataclasses import dataclass

import redis
from flask import Request, request, session

from zoomq.queue import connection
from zoomq.web.api_keys import Key, KeyRing, digest

SECRET_KEY = "zoomq:web:secret"
CSRF_FIELD = "csrf_token"


def shared_secret(client: redis.Redis) -> str:
    """One random session key for all web processes (gunicorn workers, replicas), made once."""
    client.set(SECRET_KEY, secrets.token_hex(32), nx=True)
    return connection.text(client.get(SECRET_KEY))


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Caller:
    """Who makes a request: an API key, or (with no keys configured) an anonymous client."""

    key: Key | None
    address: str

    @property
    def owner(self) -> str | None:
        """The name jobs submitted now are recorded under; None: no keys, anyone sees them."""
        return self.key.name if self.key else None

    @property
    def submitter(self) -> str:
        """Who rate limits and queue caps count against: the key, else the client address."""
        return f"key:{self.key.name}" if self.key else f"addr:{self.address}"

    def sees(self, record: dict) -> bool:
        """Whether this caller may see (and so cancel) the job of ``record``."""
        return self.key is None or self.key.admin or record.get("owner") == self.key.name


SESSION_KEY = "key"  # the session's key, as its hash: the key itself is never stored


def identify(request: Request, ring: KeyRing) -> Caller | None:
    """The caller, or None when keys are configured and the request carries none that is valid:
    an ``Authorization: Bearer`` header (API clients) or a session that entered one on a form."""
    address = request.remote_addr or "unknown"
    if not ring.enabled:
        return Caller(None, address)
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        key = ring.find(header[7:].strip())
    else:
        key = ring.by_digest(session.get(SESSION_KEY))
    return Caller(key, address) if key else None


def accept_key(given: str | None, ring: KeyRing) -> Caller | None:
    """Check a key typed into a form; a valid one signs the browser's session in."""
    key = ring.find(given)
    if key is not None and given is not None:  # find() knows no key for None
        session[SESSION_KEY] = digest(given)
    return identify(request, ring)


def csrf_token() -> str:
    """The session's CSRF token, made on first use; forms carry it in a hidden field."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def csrf_ok(request: Request) -> bool:
    expected = session.get(CSRF_FIELD)
    return expected is not None and _same(request.form.get(CSRF_FIELD), expected)


class RateLimit:
    """At most ``count`` submissions per submitter (a key or an address) in each window of ``seconds`` (a fixed window
    counter in Redis, so every web process shares it)."""

    def __init__(self, client: redis.Redis, count: int, seconds: int):
        self.r, self.count, self.seconds = client, count, seconds

    def hit(self, who: str) -> int | None:
        """Count one submission by ``who``; returns the seconds to wait when over the limit."""
        if not self.count:
            return None
        now = time.time()
        window = int(now // self.seconds)
        key = f"zoomq:rate:{who}:{window}"
        with self.r.pipeline() as p:
            p.incr(key)
            p.expire(key, self.seconds + 1)
            used, _ = p.execute()
        if used <= self.count:
            return None
        return max(1, math.ceil((window + 1) * self.seconds - now))

    def refusal(self, wait: int) -> str:
        return f"too many submissions: at most {self.count} per {self.seconds} s (ZOOMQ_RATE_LIMIT); retry in {wait} s"
