"""Log lines for people or for machines (``ZOOMQ_LOG_FORMAT``: ``text`` or ``json``).

``event(logger, "piece started", job=..., piece=...)`` logs one event with its fields: a readable
line in text, one JSON object in json (``time``, ``level``, ``logger``, ``event``, the fields and
``message``). Any other record becomes a JSON object too, with its message and exception.
``stacks_on_signal``: a worker's thread stacks on demand, for a process that seems stuck.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
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


#: ``kill -USR2 PID``: a zoomq worker writes every thread's Python stack to its stderr (its log)
STACKS_SIGNAL = signal.SIGUSR2


def stacks_on_signal() -> None:
    """Dump every thread's stack on ``STACKS_SIGNAL``. faulthandler answers in C, without the GIL, so
    even a process frozen with a thread holding the GIL shows where it is. Forked children (Celery's
    prefork pool) inherit it; Celery takes SIGUSR2 only for its remote debugger (CELERY_RDBSIG)."""
    faulthandler.register(STACKS_SIGNAL, file=2, all_threads=True)  # fd 2: Celery swaps sys.stderr for a proxy
