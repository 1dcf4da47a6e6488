"""``zoomq bench queue``: the queue's own costs, printed and written to docs/benchmarks.md. The peer
comparisons (render, deepcache, split, scaling) are development tools outside the package, in
benchmarks/ at the repository root: ``python -m benchmarks --help``."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomq.errors import ZoomqError

MOVED = ("render", "deepcache", "split", "scaling")  # once `zoomq bench` commands, now `python -m benchmarks`
ELSEWHERE = ("The render, deepcache, split and scaling benchmarks (against diffusers, on full-size models) "
             "live in benchmarks/ at the repository root: `python -m benchmarks --help` there, after "
             "`pip install -e '.[bench]'`.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure the queue on this machine (writes docs/benchmarks.md)",
                           description="Measure the queue's own costs on this machine. " + ELSEWHERE)
    what = bench.add_subparsers(dest="what", required=True, metavar="{queue}")
    p = what.add_parser("queue", help="queue latency, throughput and zoom wall time (miniature models)")
    p.add_argument("--quick", action="store_true", help="fewer jobs")
    p.add_argument("--control-plane", action="store_true",
                   help="only the control plane: status paths, submits over HTTP and Redis memory per job "
                        "at each --jobs count (no models, no rendering)")
    p.add_argument("--jobs", type=_counts, default=(200, 20_000), metavar="N,N",
                   help="queued job counts for --control-plane (default 200,20000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients submitting (default 8)")
    p.add_argument("--submits", type=int, default=400, help="jobs submitted at each count (default 400)")
    p.add_argument("--samples", type=int, default=50, help="requests timed per path (default 50)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")
    p.set_defaults(run=run_queue)
    for name in MOVED:  # unlisted: they answer where they went, whatever their options
        p = what.add_parser(name, prefix_chars="\0", add_help=False)
        p.add_argument("options", nargs="*")
        p.set_defaults(run=moved, light=True)  # nothing to import: it only answers


def moved(args: argparse.Namespace) -> int:
    """A moved benchmark: where it is now, as a usage error (exit code 2)."""
    options = "".join(f" {option}" for option in args.options)
    error = ZoomqError(f"`zoomq bench {args.what}` has moved out of the zoomq command: run "
                       f"`python -m benchmarks {args.what}{options}` from the repository root "
                       "(after `pip install -e '.[bench]'`)")
    error.exit_code = 2
    raise error


def _counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in value.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--jobs {value!r}: give job counts as whole numbers, e.g. 200,20000")
    return counts


def run_queue(args: argparse.Namespace) -> int:
    from zoomq.node import control_bench, queue_bench

    say = lambda m: print(f"zoomq: {m}", flush=True)  # noqa: E731
    if args.control_plane:
        figures = control_bench.run(args.out, args.jobs, args.clients, args.submits, args.samples, say)
    else:
        figures = queue_bench.run(args.out, quick=args.quick, say=say)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:.2f}")
    print(f"written to {args.out}")
    return 0
