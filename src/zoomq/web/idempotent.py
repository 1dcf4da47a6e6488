"""The web side of idempotent submissions (``zoomq.producer.idempotency``): the caller's scope and
the fingerprint of a ``POST /api/jobs`` request."""

from __future__ import annotations

import hashlib
import json

from flask import Request

from zoomq.producer import idempotency
from zoomq.web import security, submission

IGNORED_FIELDS = (security.CSRF_FIELD,)  # per browser session, not part of what is asked


def key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, checked (``InvalidParameter`` naming the header), or None."""
    return idempotency.check_key(request.headers.get(idempotency.HEADER))


def scope(who: security.Caller) -> str:
    """Whose keys these are: the API key's identity (its jobs' owner), else the client address, as
    the rate limit counts it. Two callers' equal keys never meet."""
    return f"owner:{who.owner}" if who.key is not None else who.submitter


def fingerprint(request: Request) -> str:
    """What makes two submissions the same: method, path and the body, as canonical JSON (the parsed
    body, so key order and spacing do not matter) or as the form's fields and the SHA-256 of each
    upload (a file is read, then rewound for the submission)."""
    parts: list[str | bytes] = [request.method, request.path]
    if request.mimetype == "application/json":
        body = submission.json_body(request)
        if body is None:
            parts += ["raw", request.get_data()]
        else:
            parts += ["json", json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)]
        return idempotency.fingerprint(parts)
    fields = sorted((name, values) for name, values in request.form.lists() if name not in IGNORED_FIELDS)
    uploads = []
    for name, upload in request.files.items(multi=True):
        data = upload.read()
        upload.stream.seek(0)
        uploads.append((name, hashlib.sha256(data).hexdigest()))
    parts += ["form", json.dumps([fields, sorted(uploads)], ensure_ascii=False)]
    return idempotency.fingerprint(parts)
