"""Idempotent submissions: the ``Idempotency-Key`` of the IETF httpapi draft, for the API and the CLI.

A client that sends a submission again under the same key (after a timeout, a lost connection, a
crash) gets the first submission's job instead of a second one. Keys are scoped per caller (the
API key's identity, the client address without keys, ``cli`` for the command line), so nobody can
reach another caller's jobs by guessing their keys, and kept for ``TTL`` (24 h) after admission.

In Redis, one string per (scope, key), named by their SHA-256 (no key value is stored): first
``admitting`` with the request's fingerprint (SET NX, for ``ADMITTING_SECONDS`` only, so a web
process that dies while admitting blocks the key for minutes, not a day), then, once the job is
recorded, ``done`` with its id, for ``TTL``. Then the same key:

- with the same fingerprint, answers the first job again (``claim`` returns its id);
- with another fingerprint (another body), is refused: ``IdempotencyMismatch`` (422);
- while the first is still being admitted, is refused: ``IdempotencyConflict`` (409, Retry-After).

A submission refused (400, 429, 503) releases its key, so the same request may be retried under it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from zoomq.errors import IdempotencyConflict, IdempotencyMismatch, InvalidParameter

if TYPE_CHECKING:
    from zoomq.producer.producer import Producer

HEADER = "Idempotency-Key"
PREFIX = "zoomq:idempotency:"
TTL = 24 * 3600  # how long a key answers its first job
ADMITTING_SECONDS = 120  # how long a key stays "being admitted" if its admission never ends
RETRY_AFTER = 1  # seconds: admission takes a few Redis round trips and perhaps an upload's store
MAX_LENGTH = 255
ADMITTING, DONE = "admitting", "done"
CLI_SCOPE = "cli"  # the command line has no API key: its keys share one scope of their own

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: What the header may hold, exactly (the OpenAPI document states the same pattern): a quoted string
#: (``\"`` and ``\\`` escaped) of 1 to 255 printable ASCII characters, or the same bare, not starting
#: with a quote nor starting or ending with a space.
QUOTED = r'"(?:[ !#-\[\]-~]|\\["\\]){1,' + str(MAX_LENGTH) + '}"'
BARE = r"[!#-~](?:[ -~]{0," + str(MAX_LENGTH - 2) + "}[!-~])?"
PATTERN = re.compile(f"{QUOTED}|{BARE}")


def check_key(value: str | None) -> str | None:
    """The key a header (or ``--idempotency-key``) carries, or None when there is none. The draft
    makes it a Structured Field string (``"8e03978e-40d5"``, quoted); a bare token is accepted too,
    as most clients send one. Anything else: ``InvalidParameter`` naming the header."""
    if value is None:
        return None
    if not PATTERN.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidParameter(HEADER, shown, f"must be 1 to {MAX_LENGTH} printable ASCII characters, bare "
                                              'or as a quoted string ("...", as the IETF draft writes it)')
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def fingerprint(parts: Iterable[bytes | str]) -> str:
    """SHA-256 over ``parts``, each length-prefixed (so no two splits of the same bytes collide)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _digest_value(value):
    """An option as the fingerprint sees it: files and images by the SHA-256 of their content."""
    if isinstance(value, (bytes, bytearray)):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Path):
        return {"sha256": hashlib.sha256(value.read_bytes()).hexdigest()}
    if isinstance(value, Image.Image):
        return {"sha256": hashlib.sha256(value.tobytes()).hexdigest(), "mode": value.mode, "size": value.size}
    return str(value)


def submission_fingerprint(kind: str, model: str, prompt: str, options: dict) -> str:
    """The fingerprint of a submission as the producer takes it (the CLI's): canonical JSON."""
    body = {"kind": kind, "model": model, "prompt": prompt, "options": options}
    return fingerprint(["submit", json.dumps(body, sort_keys=True, separators=(",", ":"), default=_digest_value)])


def redis_key(scope: str, key: str) -> str:
    return PREFIX + hashlib.sha256(json.dumps([scope, key]).encode()).hexdigest()


@dataclass
class Claim:
    """This admission's hold on a key: ``done`` records its job, ``release`` frees the key."""

    producer: Producer
    key: str
    held: str  # the "admitting" value written, compared before releasing
    fingerprint: str

    def done(self, job_id: str) -> None:
        value = json.dumps({"state": DONE, "fingerprint": self.fingerprint, "job": job_id})
        self.producer._call(self.producer.redis.set, self.key, value, ex=TTL)

    def release(self) -> None:
        """Free the key (only while this admission holds it), so the same request may be sent again."""
        self.producer._call(self.producer.redis.eval, _RELEASE, 1, self.key, self.held)


def claim(producer: Producer, scope: str, key: str, fp: str, name: str = HEADER) -> Claim | str:
    """Begin admitting a submission under ``key``: a ``Claim`` when it is the key's first, the
    first job's id when it was admitted already with the same fingerprint ``fp``; raises
    ``IdempotencyMismatch`` for another fingerprint, ``IdempotencyConflict`` while the first is
    still being admitted. ``name``: how the caller gave the key (the header, or the CLI's option)."""
    stored = redis_key(scope, key)
    held = json.dumps({"state": ADMITTING, "fingerprint": fp, "token": secrets.token_hex(8)})
    for _ in range(3):  # a key that expires between SET NX and GET is tried again
        if producer._call(producer.redis.set, stored, held, nx=True, ex=ADMITTING_SECONDS):
            return Claim(producer, stored, held, fp)
        raw = producer._call(producer.redis.get, stored)
        if raw is None:
            continue
        found = json.loads(raw)
        if found.get("fingerprint") != fp:
            raise IdempotencyMismatch(
                f"{name}: this key was used within {TTL // 3600} h for a different request (another body); "
                "it keeps answering that one: send this request under a new key")
        if found.get("state") == DONE:
            return str(found["job"])
        break
    raise IdempotencyConflict(f"{name}: the first request with this key is still being admitted; "
                              f"retry in {RETRY_AFTER} s to get its job", RETRY_AFTER)


def submit_once(producer: Producer, scope: str, key: str | None, fp: str, submit: Callable[[], str],
                name: str = HEADER) -> tuple[str, bool]:
    """``(job id, replayed)``: ``submit()``'s job, or with ``key`` given and already used for the
    same submission, that submission's job (``replayed`` True) without calling ``submit``."""
    if key is None:
        return submit(), False
    found = claim(producer, scope, key, fp, name)
    if isinstance(found, str):
        return found, True
    try:
        job_id = submit()
    except BaseException:
        found.release()
        raise
    found.done(job_id)
    return job_id, False
