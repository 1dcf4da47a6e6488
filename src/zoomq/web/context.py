"""What a view needs to know about the request it serves: the shared ``Web`` state, who is calling,
and the job it names (or 404)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import abort, current_app, request

from zoomq.config import Settings
from zoomq.errors import InvalidParameter, Unauthorized
from zoomq.producer.producer import Producer
from zoomq.web import security
from zoomq.web.api_keys import KeyRing
from zoomq.web.throttle import KeyAttempts


@dataclass
class Web:
    """What the views share: settings, the producer, the API keys, the rate limit and the browser sessions."""

    settings: Settings
    producer: Producer
    rate_limit: security.RateLimit
    keys: KeyRing
    sessions: security.Sessions
    key_attempts: KeyAttempts  # wrong keys per client address (ZOOMQ_KEY_ATTEMPTS)


def web() -> Web:
    return current_app.extensions["zoomq"]


def key_holder() -> security.Caller | None:
    """Who makes this request, or None when keys are configured and it carries no valid one. A
    wrong ``Authorization: Bearer`` key counts against the client's address, and an address past
    ``ZOOMQ_KEY_ATTEMPTS`` is refused (``TooManyKeyAttempts``, 429) whatever key it sends."""
    w = web()
    address = request.remote_addr or "unknown"
    return security.identify(request, w.keys, w.sessions, lambda key: w.key_attempts.key(w.keys, address, key))


def is_admin() -> bool:
    """Whether the caller holds an admin key; with no keys configured, everyone has the run of it."""
    who = key_holder()
    return who is not None and (who.key is None or who.key.admin)


def caller() -> security.Caller:
    """Who makes this request; raises ``Unauthorized`` (401) when a key is needed and missing, and
    answers 403 to a state-changing request on the session cookie that another site may have sent."""
    found = key_holder()
    if found is None:
        raise Unauthorized("this server needs an API key: send Authorization: Bearer <key>, "
                           "or enter it on the submit form")
    refusal = security.cross_site(request, found)
    if refusal is not None:
        abort(403, refusal)
    return found


def job_or_404(job_id: str) -> dict:
    """The job's status record, or 404 for an unknown, expired or malformed id, and for another
    key's job (a 403 would confirm that the id exists)."""
    who = caller()
    try:
        record = web().producer.status(job_id)
    except InvalidParameter:
        abort(404)
    if not who.sees(record):
        abort(404)
    return record
