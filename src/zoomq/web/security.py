"""The web front end's guards: who the caller is (an API key, or an anonymous address), browser
sessions and CSRF, and the submission rate limit kept in Redis (per key, or per address without one).

A browser that entered a key on a form holds a random session id in an HttpOnly cookie (``Secure``
and ``__Host-`` over HTTPS); Redis keeps, under the id's hash, which key it entered, until the
session expires or signs out. No secret signs anything, so every web process and replica checks
any session, and nothing in Redis or in the keys file makes a cookie. The CSRF token of a page is
derived from the session id. A state-changing request that the cookie authenticates must show it
came from this site: a form carries the token, anything else a same-origin ``Origin``; a caller
with ``Authorization: Bearer`` sends no cookie credential and is exempt.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from flask import Request, Response, g, request

from zoomq.config import Settings
from zoomq.queue import connection
from zoomq.web.api_keys import Key, KeyRing, digest
from zoomq.web.throttle import FixedWindow, bearer, wait_seconds

CSRF_FIELD = "csrf_token"
COOKIE = "zoomq_session"
SECURE_COOKIE = "__Host-zoomq_session"  # over HTTPS: only this host may set it, and only over HTTPS
SESSION_PREFIX = "zoomq:session:"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): 256 random bits
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Caller:
    """Who makes a request: an API key, or (with no keys configured) an anonymous client."""

    key: Key | None
    address: str
    by_cookie: bool = False  # signed in by the session cookie (not by an Authorization header)

    @property
    def owner(self) -> str | None:
        """The identity jobs submitted now are recorded under; None: no keys, anyone sees them."""
        return self.key.owner if self.key else None

    @property
    def submitter(self) -> str:
        """Who rate limits and queue caps count against: the key, else the client address."""
        return f"key:{self.key.name}" if self.key else f"addr:{self.address}"

    def sees(self, record: dict) -> bool:
        """Whether this caller may see (and so cancel) the job of ``record``."""
        return self.key is None or self.key.admin or record.get("owner") == self.key.owner


class Sessions:
    """Signed-in browsers. The cookie holds a random id; Redis holds, under the id's SHA-256 (so
    reading Redis gives no cookie away), the hash of the key entered, for ``session_ttl`` seconds
    or until sign-out. A visitor who has not signed in has an id too (the CSRF token derives from
    it) but no record."""

    def __init__(self, client: redis.Redis, s: Settings):
        self.r, self.settings, self.ttl = client, s, s.session_ttl

    @staticmethod
    def _record(session_id: str) -> str:
        return SESSION_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()

    def start(self, key_digest: str) -> str:
        """A new signed-in session for the key whose hash is ``key_digest``; returns its id."""
        session_id = secrets.token_urlsafe(32)
        self._call(self.r.set, self._record(session_id), key_digest, ex=self.ttl)
        return session_id

    def key_digest(self, session_id: str) -> str | None:
        """The hash of the key the session signed in with, or None (never signed in, expired, ended)."""
        found = self._call(self.r.get, self._record(session_id))
        return connection.text(found) if found is not None else None

    def end(self, session_id: str) -> None:
        self._call(self.r.delete, self._record(session_id))

    def _call(self, command, *args, **kwargs):
        try:
            return command(*args, **kwargs)
        except redis.RedisError as e:
            raise connection.unavailable(e, self.settings) from None


def cookie_name(req: Request) -> str:
    """Over HTTPS (directly, or per a trusted proxy's X-Forwarded-Proto) only the ``__Host-``
    cookie counts: a plain one could have been set over plain HTTP."""
    return SECURE_COOKIE if req.is_secure else COOKIE


def _session_id(create: bool = False) -> str | None:
    """This request's session id (from its cookie, or the one given during it); with ``create``,
    a new anonymous one when there is none."""
    if "zoomq_session" not in g:
        given = request.cookies.get(cookie_name(request), "")
        g.zoomq_session = given if _SESSION_ID.fullmatch(given) else None
    if g.zoomq_session is None and create:
        _give(secrets.token_urlsafe(32))
    return g.zoomq_session


def _give(session_id: str | None) -> None:
    """Make ``session_id`` this request's, and have ``save_cookie`` send it (None: drop the cookie)."""
    g.zoomq_session = session_id
    g.zoomq_cookie_changed = True


def save_cookie(response: Response) -> Response:
    """After each request: send a session id given during it, or remove one that ended."""
    if not g.get("zoomq_cookie_changed"):
        return response
    name, secure, session_id = cookie_name(request), request.is_secure, g.zoomq_session
    if session_id is None:
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="Lax")
    else:  # no Max-Age: gone when the browser closes; the record in Redis expires anyway
        response.set_cookie(name, session_id, path="/", secure=secure, httponly=True, samesite="Lax")
    return response


def identify(request: Request, ring: KeyRing, sessions: Sessions,
             find: Callable[[str], Key | None] | None = None) -> Caller | None:
    """The caller, or None when keys are configured and the request carries none that is valid:
    an ``Authorization: Bearer`` header (API clients), looked up by ``find`` (default ``ring.find``;
    the views pass the wrong-key throttle's), or a session that entered one on a form."""
    address = request.remote_addr or "unknown"
    if not ring.enabled:
        return Caller(None, address)
    presented = bearer(request)
    if presented is not None:
        key = (find or ring.find)(presented)
        return Caller(key, address) if key else None
    session_id = _session_id()
    key = ring.by_digest(sessions.key_digest(session_id)) if session_id else None
    return Caller(key, address, by_cookie=True) if key else None


def accept_key(given: str | None, ring: KeyRing, sessions: Sessions) -> Caller | None:
    """Check a key typed into a form; a valid one signs the browser in, under a new session id
    (one planted before, by whoever could set a cookie, signs nobody in)."""
    key = ring.find(given)
    if key is not None and given is not None:  # find() knows no key for None
        old = _session_id()
        if old is not None:
            sessions.end(old)
        _give(sessions.start(digest(given)))
    return identify(request, ring, sessions)


def sign_out(sessions: Sessions) -> None:
    """End the browser's session on the server (its cookie, replayed, signs nobody in) and drop the cookie."""
    session_id = _session_id()
    if session_id is not None:
        sessions.end(session_id)
    _give(None)


def _csrf_for(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"zoomq csrf token", hashlib.sha256).hexdigest()


def csrf_token() -> str:
    """The CSRF token of this browser's session (an anonymous one is made on first use); forms
    carry it in a hidden field. Only a page of this site, which can read it, can send it back."""
    session_id = _session_id(create=True)
    assert session_id is not None  # create=True made one
    return _csrf_for(session_id)


def csrf_ok(request: Request) -> bool:
    session_id = _session_id()
    return session_id is not None and _same(request.form.get(CSRF_FIELD), _csrf_for(session_id))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def same_origin(request: Request) -> bool:
    given = request.headers.get("Origin", "")
    try:
        return given not in ("", "null") and _origin(given) == _origin(request.host_url)
    except ValueError:  # a malformed port
        return False


def cross_site(request: Request, who: Caller) -> str | None:
    """Why a state-changing request authenticated by the session cookie may have been sent by
    another site, or None: a form must carry the CSRF token, anything else a same-origin Origin."""
    if not who.by_cookie or request.method in SAFE_METHODS:
        return None
    bearer = "API clients: send Authorization: Bearer <key> instead of the cookie"
    if request.mimetype in FORM_TYPES:
        if csrf_ok(request):
            return None
        return (f"{CSRF_FIELD}: missing or not this session's; a form signed in by the session cookie must "
                f"carry the token of this site's page (reload it and send it again); {bearer}")
    if same_origin(request):
        return None
    origin = request.headers.get("Origin")
    given, site = repr(origin) if origin else "missing", request.host_url.rstrip("/")
    return (f"Origin: {given}, not this site ({site}); a request signed in by the session cookie must come "
            f"from this site's pages; {bearer}")


class RateLimit:
    """At most ``count`` submissions per submitter (a key or an address) in each window of ``seconds`` (a fixed window
    counter in Redis, so every web process shares it)."""

    def __init__(self, client: redis.Redis, count: int, seconds: int):
        self.count, self.seconds = count, seconds
        self.window = FixedWindow(client, "zoomq:rate:", seconds)

    def hit(self, who: str) -> int | None:
        """Count one submission by ``who``; returns the seconds to wait when over the limit."""
        if not self.count:
            return None
        used, left = self.window.add(who)
        return None if used <= self.count else wait_seconds(left)

    def refusal(self, wait: int) -> str:
        return f"too many submissions: at most {self.count} per {self.seconds} s (ZOOMQ_RATE_LIMIT); retry in {wait} s"
