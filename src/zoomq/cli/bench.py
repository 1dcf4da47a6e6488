"""``zoomq bench``: measured figures, printed and written to docs/benchmarks.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure this machine (writes docs/benchmarks.md)")
    what = bench.add_subparsers(dest="what", required=True)
    p = what.add_parser("queue", help="queue latency, throughput and zoom wall time (miniature models)")
    p.add_argument("--quick", action="store_true", help="fewer jobs")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")
    p.set_defaults(run=run_queue)


def run_queue(args: argparse.Namespace) -> int:
    from zoomq.bench import queue

    figures = queue.run(args.out, quick=args.quick, say=lambda m: print(f"zoomq: {m}", flush=True))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:.2f}")
    print(f"written to {args.out}")
    return 0
