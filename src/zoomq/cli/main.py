"""Entry point of the ``zoomq`` command: builds the parser, runs the subcommand, turns errors
into one line on stderr and an exit code (2 for bad input, 1 for other failures). An unexpected
exception (a bug) is one line too, its traceback kept in a file (``--debug`` shows it in place)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from zoomq import __version__
from zoomq.cli.options import option_name
from zoomq.errors import InvalidParameter, ZoomqError


def _quiet_libraries(now: bool) -> None:
    """Keep library chatter (tracer warnings, hub notices) off the user's terminal: through the
    environment for processes and imports to come, and ``now`` for progress bars as well."""
    warnings.filterwarnings("ignore")
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)
    if not now:
        return
    import diffusers
    import transformers

    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    from zoomq.cli import bench, jobs, keys, prepare, render, up, web, worker

    parser = argparse.ArgumentParser(prog="zoomq", description="Stable Diffusion 2 on CPUs with OpenVINO.")
    parser.add_argument("--version", action="version", version=f"zoomq {__version__}")
    parser.add_argument("--debug", action="store_true", dest="zoomq_debug",  # `zoomq web --debug` is Flask's
                        help="debug logs, and the traceback of an unexpected error shown here")
    sub = parser.add_subparsers(dest="command", required=True)
    prepare.add_parser(sub)
    render.add_parser(sub)
    worker.add_parser(sub)
    jobs.add_parsers(sub)
    web.add_parser(sub)
    up.add_parser(sub)
    bench.add_parser(sub)
    keys.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    from zoomq import logs  # text or JSON lines (ZOOMQ_LOG_FORMAT); worker pool processes inherit it

    logs.configure(level=logging.INFO)
    if args.zoomq_debug:
        logging.getLogger("zoomq").setLevel(logging.DEBUG)  # ours only: libraries' debug logs drown it
    try:
        # A worker imports diffusers only where it renders, and only then: it starts in a fraction of the time.
        _quiet_libraries(now=not getattr(args, "light", False))
        if not getattr(args, "own_redis", False):
            use_running_stack()
        return args.run(args) or 0
    except InvalidParameter as e:
        lines = [f"zoomq: error: {option_name(error.param)}: {error.rule} (got {error.value!r})"
                 for error in getattr(e, "errors", [e])]  # InvalidParameters: one line per wrong option
        print("\n".join(dict.fromkeys(lines)), file=sys.stderr)  # width and height are both --size
        return e.exit_code
    except ZoomqError as e:
        print(f"zoomq: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("zoomq: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line that says what and where, the traceback kept for the report
        return internal_error(e, subcommands(parser, argv), argv, args.zoomq_debug)


def use_running_stack() -> None:
    """With ``ZOOMQ_REDIS_URL`` unset (or naming it without its password), a ``zoomq up`` of this user
    running on ``ZOOMQ_DATA_DIR`` lends this command its embedded Redis, password included
    (``zoomq.node.embedded_redis``): through the environment, so Celery's broker gets it too."""
    from zoomq.config import settings
    from zoomq.node import embedded_redis

    try:
        data = settings().data_dir
    except InvalidParameter:
        return  # a bad setting: the command says so where it reads it
    found = embedded_redis.running_url(data, os.environ.get("ZOOMQ_REDIS_URL", "").strip() or None)
    if found:
        os.environ["ZOOMQ_REDIS_URL"] = found


# -- unexpected errors ---------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """``render zoom``: the subcommands named in ``argv``."""
    words = []
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if token in subs[0].choices:
            words.append(token)
            parser = subs[0].choices[token]
    return " ".join(words)


def _ours(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1])


def where(e: BaseException) -> str:
    """``pipeline.py:175``: the line that raised, and the last line of zoomq on the way when the
    raising line is in a library."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "unknown place"
    last = frames[-1]
    text = f"{Path(last.filename).name}:{last.lineno}"
    ours = [f for f in frames if _ours(f.filename)]
    if ours and ours[-1] is not last:
        text += f", called from {Path(ours[-1].filename).name}:{ours[-1].lineno}"
    return text


def describe(e: BaseException) -> str:
    """``RuntimeError: boom``, on one line and not too long to read."""
    cls = type(e)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    message = " ".join(str(e).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{name}: {message}" if message else name


def _crash_folders() -> list[Path]:
    """Where a traceback file may go: the cache's crash/ folder, else the temporary folder."""
    folders = []
    try:
        from zoomq.config import settings

        folders.append(settings().cache_dir / "crash")
    except Exception:  # a bad setting must not hide the error being reported
        pass
    return folders + [Path(tempfile.gettempdir())]


def save_traceback(e: BaseException, argv: list[str]) -> Path | None:
    """Write the command line, versions and full traceback to a new file; returns its path, or
    None when no folder can be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = (f"zoomq {__version__}, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
              f"command: zoomq {shlex.join(argv)}\n\n" + "".join(traceback.format_exception(e)))
    for folder in _crash_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"zoomq-crash-{stamp}-", suffix=".txt", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(report)
            return Path(name)
        except OSError:
            continue
    return None


def internal_error(e: Exception, command: str, argv: list[str], debug: bool) -> int:
    """Report an unexpected exception in one line on stderr (after the traceback with
    ``--debug``, else with the file that keeps it); exit code 1."""
    line = f"zoomq: internal error in zoomq {command}: {describe(e)} (at {where(e)})"
    if debug:
        traceback.print_exception(e, file=sys.stderr)
        print(line, file=sys.stderr)
        return 1
    path = save_traceback(e, argv)
    rerun = f"rerun as `zoomq --debug {command} ...` to see it here"
    kept = f"the full traceback is in {path}" if path else "the traceback could not be saved"
    print(f"{line}; {kept}; {rerun}", file=sys.stderr)
    return 1
