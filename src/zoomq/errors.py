"""One small exception hierarchy: every error zoomq raises on purpose is a ``ZoomqError``.

Callers (CLI, workers, web) catch ``ZoomqError`` and show ``str(error)``: the messages are written
for a person and name the parameter, the bad value and what to do.
"""

from __future__ import annotations


class ZoomqError(Exception):
    """Root of every error zoomq raises on purpose."""

    #: Exit code the CLI uses for this kind of error.
    exit_code = 1


class InvalidParameter(ZoomqError, ValueError):
    """A request parameter is out of range or malformed (the caller's fault: exit code 2)."""

    exit_code = 2

    def __init__(self, param: str, value: object, rule: str):
        self.param = param
        self.value = value
        self.rule = rule
        super().__init__(f"{param}: {rule} (got {value!r})")


class InvalidParameters(InvalidParameter):
    """Several parameters are bad at once: ``errors`` holds one ``InvalidParameter`` per field, so a
    form or an API client can show them all; it reads (and maps to an option) like the first."""

    def __init__(self, errors: list[InvalidParameter]):
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(first.param, first.value, first.rule)
        more = ", ".join(e.param for e in self.errors[1:])
        self.args = (f"{first}; also wrong: {more}",)


class Checks:
    """Runs independent checks and keeps every failure, one per parameter.

    ``checks(fn, *args)`` returns ``fn(*args)``, or ``None`` when it raised ``InvalidParameter``;
    ``raise_errors()`` then raises the one error, or ``InvalidParameters`` for several.
    """

    def __init__(self) -> None:
        self.errors: list[InvalidParameter] = []

    def __call__(self, fn, *args):
        try:
            return fn(*args)
        except InvalidParameters as e:
            self.add(*e.errors)
        except InvalidParameter as e:
            self.add(e)
        return None

    def add(self, *errors: InvalidParameter) -> None:
        for error in errors:
            if all(e.param != error.param for e in self.errors):
                self.errors.append(error)

    def raise_errors(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise InvalidParameters(self.errors)


class ModelError(ZoomqError):
    """A model folder or hub id cannot be used: not SD2, not prepared, unreadable, wrong kind."""

    exit_code = 2


class PrepareError(ZoomqError):
    """Converting a model to OpenVINO failed (disk full, output folder taken, network missing)."""


class RenderCancelled(ZoomqError):
    """The per-step callback asked the render to stop; nothing was produced."""


class QueueFull(ZoomqError):
    """A submission refused for load, not for its content: too many unfinished jobs for one
    submitter (``status`` 429) or in the whole queue (503). Retry after ``retry_after`` seconds."""

    def __init__(self, message: str, status: int, retry_after: int):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BrokerUnavailable(ZoomqError):
    """Redis cannot be reached, or refuses zoomq (see ``BrokerRefused``)."""


class BrokerRefused(BrokerUnavailable):
    """Redis answers but refuses zoomq's password or TLS: waiting will not help, a setting must change."""


class Unauthorized(ZoomqError):
    """Keys are configured and the request carries no valid one (401)."""


class TooManyKeyAttempts(ZoomqError):
    """Too many wrong API keys came from one client address in the window of ``ZOOMQ_KEY_ATTEMPTS``:
    every key from it is refused (429) for ``retry_after`` more seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class KeysUnavailable(ZoomqError):
    """The API keys file went bad while the server runs: no key can be checked (503). The message,
    which names the file, the line and perhaps a key's name and hash, is for the log, not for clients."""


class OpenWithoutKeys(ZoomqError):
    """The web server was asked to listen on an address other hosts can reach, and no API key is
    configured: every caller would see, submit and cancel every job. Bad usage (exit code 2)."""

    exit_code = 2


class PieceBusy(ZoomqError):
    """Another live worker holds this piece's lease; try again later."""


class LeaseLost(PieceBusy):
    """This worker lost the piece's lease (cut off from Redis long enough for the watchdog to hand
    the piece to another worker): its result is dropped, never written over the other's."""


class LinkLost(ZoomqError):
    """The helper is gone (never came, lost, left, or too slow): the leader carries on alone."""


class ArtifactStoreError(ZoomqError):
    """The store cannot be used as configured: no bucket, no access, no endpoint."""


class ArtifactStoreUnreachable(ArtifactStoreError):
    """The store did not answer (after its client's own retries): perhaps only for a while, so
    tasks retry with backoff and the web answers 503."""


class VideoError(ZoomqError):
    """ffmpeg failed; the message carries its last lines."""


class ModelNotServed(ZoomqError):
    """A job reached a worker that does not serve its model (a job written by hand, or a worker
    restarted with other models): the job fails, naming the model."""

    def __init__(self, model: str, served: list[str]):
        self.model = model
        super().__init__(f"model {model!r}: this worker does not serve it ({', '.join(served) or 'none'})")


class ArtifactMissing(ZoomqError):
    """An artifact a job needs (its init image, a keyframe) is gone from the store, expired or
    deleted. The message names the job's own key, nothing of the store's location: users see it."""


class IdempotencyConflict(ZoomqError):
    """A submission with an ``Idempotency-Key`` whose first submission is still being admitted
    (409): retry after ``retry_after`` seconds to get that job's answer."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyMismatch(ZoomqError):
    """An ``Idempotency-Key`` reused, within its lifetime, for a different request (422): the key
    names another job; send this request under a new key. Bad usage (exit code 2)."""

    exit_code = 2
