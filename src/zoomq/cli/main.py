"""Entry point of the ``zoomq`` command: builds the parser, runs the subcommand, turns errors
into one line on stderr and an exit code (2 for bad input, 1 for other failures)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from zoomq import __version__
from zoomq.errors import InvalidParameter, ZoomqError

# Parameters whose CLI option is not simply --name-with-dashes.
_OPTIONS = {"width": "--size", "height": "--size", "prompt": "PROMPT", "job_id": "JOB_ID"}


def option_name(param: str) -> str:
    if param.startswith("ZOOMQ_"):
        return param  # a setting (environment variable), not an option
    return _OPTIONS.get(param, "--" + param.replace("_", "-"))


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
    from zoomq.cli import bench, jobs, prepare, render, up, web, worker

    parser = argparse.ArgumentParser(prog="zoomq", description="Stable Diffusion 2 on CPUs with OpenVINO.")
    parser.add_argument("--version", action="version", version=f"zoomq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    prepare.add_parser(sub)
    render.add_parser(sub)
    worker.add_parser(sub)
    jobs.add_parsers(sub)
    web.add_parser(sub)
    up.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from zoomq import logs  # text or JSON lines (ZOOMQ_LOG_FORMAT); worker pool processes inherit it

    logs.configure(level=logging.INFO)
    # A worker imports diffusers only where it renders, and only then: it starts in a fraction of the time.
    _quiet_libraries(now=not getattr(args, "light", False))
    try:
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
