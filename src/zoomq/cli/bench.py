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
    p = what.add_parser("render", help="zoomq against diffusers and the machine's limit (full-size models)")
    p.add_argument("--quick", action="store_true", help="one repetition, 5 steps, 512 px only")
    p.add_argument("--repeats", type=int, help="repetitions (default 3; medians are reported)")
    p.add_argument("--models-dir", type=Path, help="where the full-size models are cached "
                   "(default $ZOOMQ_CACHE_DIR/bench-models)")
    p.add_argument("--only", choices=("main", "fast"), help="one part: `main` (the modes against diffusers and "
                   "the machine's limit, the worker figures) or `fast` (SD-Turbo, the tiny decoder); default both")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the harness's own test
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")
    p.set_defaults(run=run_render)
    p = what.add_parser("split", help="a zoom keyframe on two workers sharing its guided steps, against one, "
                        "alone and with DeepCache; a whole 5-keyframe video likewise (full-size inpainting model)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each setup (default 1; medians are reported)")
    p.add_argument("--steps", type=int, help="steps per keyframe (default the model's: 20)")
    p.add_argument("--frames", type=int, help="the whole video's frames between keyframes (default 30)")
    p.add_argument("--models-dir", type=Path, help="where the full-size models are cached "
                   "(default $ZOOMQ_CACHE_DIR/bench-models)")
    p.add_argument("--tiny", action="store_true", help="the miniature inpainting model: checks the benchmark itself")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")
    p.set_defaults(run=run_split)
    p = what.add_parser("deepcache", help="DeepCache's feature caching: the shallow branch's share of the UNet, "
                        "text-to-image and a zoom keyframe at --cache-interval 1, 2, 3, 5 (full-size models)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each figure (default 1; medians are reported)")
    p.add_argument("--steps", type=int, help="steps per render (default 20)")
    p.add_argument("--models-dir", type=Path, help="where the full-size models are cached "
                   "(default $ZOOMQ_CACHE_DIR/bench-models)")
    p.add_argument("--tiny", action="store_true", help="the miniature models: checks the benchmark itself")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")
    p.set_defaults(run=run_deepcache)
    p = what.add_parser("scaling", help="the full-size UNet's call by thread count: batch 2 against 1 (the guidance "
                        "split), whole against DeepCache's shallow branch, and two half-size workers side by side")
    p.add_argument("--threads", type=_thread_counts, help="comma-separated thread counts (default 1, 2, 4, ... "
                   "up to this machine's CPUs)")
    p.add_argument("--repeats", type=int, default=3, help="calls timed per figure, the best reported (default 3)")
    p.add_argument("--models-dir", type=Path, help="where the UNet is cached (default $ZOOMQ_CACHE_DIR/bench-models)")
    p.add_argument("--tiny", action="store_true", help="the miniature UNet: checks the benchmark itself")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")
    p.set_defaults(run=run_scaling)


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts >= 1, "
                                         "e.g. 16,8,4")
    return counts


def run_queue(args: argparse.Namespace) -> int:
    from zoomq.bench import queue

    figures = queue.run(args.out, quick=args.quick, say=lambda m: print(f"zoomq: {m}", flush=True))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:.2f}")
    print(f"written to {args.out}")
    return 0


def run_render(args: argparse.Namespace) -> int:
    from zoomq.bench import render
    from zoomq.errors import InvalidParameter

    if args.repeats is not None and args.repeats < 1:
        raise InvalidParameter("repeats", args.repeats, "must be at least 1")
    result = render.run(args.out, quick=args.quick, repeats=args.repeats, models_dir=args.models_dir,
                        say=lambda m: print(f"zoomq: {m}", flush=True), tiny=args.tiny, only=args.only)
    for part in result.values():
        for mode, figures in part["medians"].items():
            print(mode + ": " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
    if "fast" in result:
        e2e = result["fast"]["worker"]
        print(f"fast tier: request to PNG in a warm worker, median {e2e['median']:.2f} s, best {e2e['best']:.2f} s")
    print(f"written to {args.out}")
    return 0


def _check_counts(args: argparse.Namespace) -> None:
    """``InvalidParameter`` for a --repeats, --steps or --frames below 1."""
    from zoomq.errors import InvalidParameter

    for name in ("repeats", "steps", "frames"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise InvalidParameter(name, value, "must be at least 1")


def run_split(args: argparse.Namespace) -> int:
    from zoomq.bench import split

    _check_counts(args)
    result = split.run(args.out, tiny=args.tiny, repeats=args.repeats, steps=args.steps, models_dir=args.models_dir,
                       say=lambda m: print(f"zoomq: {m}", flush=True), frames=args.frames)
    f, whole = result["figures"], result["whole"]
    print(f"keyframe: one worker {f['one_worker_s']:.2f} s, two workers {f['two_workers_s']:.2f} s ({f['ratio']:.2f}x), "
          f"with DeepCache {split.CACHE} {f['both_s']:.2f} s ({f['both_ratio']:.2f}x); "
          f"exchange {100 * f['exchange_share']:.1f} % of the keyframe")
    print(f"whole {split.WHOLE}-keyframe video: one worker {whole['one']:.1f} s, two with both {whole['two']:.1f} s")
    print(f"written to {args.out}")
    return 0


def run_deepcache(args: argparse.Namespace) -> int:
    from zoomq.bench import deepcache

    _check_counts(args)
    result = deepcache.run(args.out, tiny=args.tiny, repeats=args.repeats, steps=args.steps,
                           models_dir=args.models_dir, say=lambda m: print(f"zoomq: {m}", flush=True))
    m = result["medians"]
    print(f"shallow branch {100 * m['shallow_share']:.0f} % of the UNet call; text-to-image at interval 3: "
          f"{deepcache.ratio(m, 't2i', 3):.2f}x, keyframe {deepcache.ratio(m, 'keyframe', 3):.2f}x")
    print(f"written to {args.out}")
    return 0


def run_scaling(args: argparse.Namespace) -> int:
    from zoomq.bench import scaling

    _check_counts(args)
    result = scaling.run(args.out, threads=args.threads, repeats=args.repeats, tiny=args.tiny,
                         models_dir=args.models_dir, say=lambda m: print(f"zoomq: {m}", flush=True))
    for threads, row in result["rows"].items():
        print(f"{threads} thread(s): split bound {scaling.split_bound(row):.2f}x, with DeepCache {scaling.CACHE} "
              f"{scaling.both_bound(row):.2f}x, shallow share {row['shallow_2'] / row['full_2']:.2f}")
    print(f"written to {args.out}")
    return 0
