"""Log lines for people or for machines (``ZOOMQ_LOG_FORMAT``: ``text`` or ``json``).

``event(logger, "piece started", job=..., piece=...)`` logs one event with its fields: a readable
line in text, one JSON object in json (``time``, ``level``, ``logger``, ``event``, the fields and
``message``). Any other record becomes a JSON object too, with its message and exception.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from zoomq.config import log_format
from zoomq.errors import InvalidParameter

TEXT_FORMAT = "zoomq: %(message)s"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields) -> None:
    """Log the event ``name`` with its fields (kept apart on the record for the JSON formatter)."""
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    logger.log(level, "%s: %s", name, text, extra={"zoomq_event": name, "zoomq_fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        name = getattr(record, "zoomq_event", None)
        if name is not None:
            out["event"] = name
            out.update(getattr(record, "zoomq_fields", {}))
        out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def current_format() -> str:
    """``ZOOMQ_LOG_FORMAT``, or ``text`` when it is invalid: the command that reads its settings
    refuses the bad value with a message naming it, which needs a working log first."""
    try:
        return log_format()
    except InvalidParameter:
        return "text"


def configure(fmt: str | None = None, level: int | str = logging.INFO) -> None:
    """Log to stderr in ``fmt`` (default ``ZOOMQ_LOG_FORMAT``) at ``level``. Like
    ``logging.basicConfig``, it leaves a root logger that already has a handler (a host
    application's, pytest's) alone."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt or current_format()))
    root.addHandler(handler)
    root.setLevel(level)
