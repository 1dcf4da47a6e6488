"""The web front end's guards: the optional API token, CSRF tokens for the form, the session key
shared by every web process, and the per-client submission rate limit kept in Redis."""

from __future__ import annotations

import hmac
import math
import secrets
import time

import redis
from flask import Request, session

SECRET_KEY = "zoomq:web:secret"
CSRF_FIELD = "csrf_token"


def shared_secret(client: redis.Redis) -> str:
    """One random session key for all web processes (gunicorn workers, replicas), made once."""
    client.set(SECRET_KEY, secrets.token_hex(32), nx=True)
    return client.get(SECRET_KEY).decode()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def authorized(request: Request, token: str) -> bool:
    """True when no token is configured, or the request carries it: an ``Authorization: Bearer``
    header (API clients) or a session that entered it on the form (browsers)."""
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and _same(header[len("Bearer "):].strip(), token):
        return True
    return authorized_session(token)


def accept_token(given: str | None, token: str) -> bool:
    """Check a token typed into the form; a correct one authorizes the browser's session."""
    if token and _same(given, token):
        session["authorized"] = True
    return authorized_session(token)


def authorized_session(token: str) -> bool:
    return not token or bool(session.get("authorized"))


def csrf_token() -> str:
    """The session's CSRF token, made on first use; forms carry it in a hidden field."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def csrf_ok(request: Request) -> bool:
    expected = session.get(CSRF_FIELD)
    return expected is not None and _same(request.form.get(CSRF_FIELD), expected)


class RateLimit:
    """At most ``count`` submissions per client in each window of ``seconds`` (a fixed window
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
