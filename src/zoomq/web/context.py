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


@dataclass
class Web:
    """What the views share: settings, the producer, the API keys and the rate limit."""

    settings: Settings
    producer: Producer
    rate_limit: security.RateLimit
    keys: KeyRing


def web() -> Web:
    return current_app.extensions["zoomq"]


def caller() -> security.Caller:
    """Who makes this request; raises ``Unauthorized`` (401) when a key is needed and missing."""
    found = security.identify(request, web().keys)
    if found is None:
        raise Unauthorized("this server needs an API key: send Authorization: Bearer <key>, "
                           "or enter it on the submit form")
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
