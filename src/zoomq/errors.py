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


class ModelError(ZoomqError):
    """A model folder or hub id cannot be used: not SD2, not prepared, unreadable, wrong kind."""

    exit_code = 2


class PrepareError(ZoomqError):
    """Converting a model to OpenVINO failed (disk full, output folder taken, network missing)."""


class RenderCancelled(ZoomqError):
    """The per-step callback asked the render to stop; nothing was produced."""
