"""``python -m benchmarks render|deepcache|split|scaling``: run one benchmark, print its headline
figures, write its section of docs/benchmarks.md and its raw figures beside it."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from zoomq.errors import ZoomqError

MODELS_HELP = "where the full-size models are cached (default $ZOOMQ_CACHE_DIR/bench-models)"


def _count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts >= 1, e.g. 16,8,4")
    return counts


def _common(p: argparse.ArgumentParser, models: str = MODELS_HELP) -> None:
    p.add_argument("--models-dir", type=Path, help=models)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default docs/benchmarks.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="zoomq's benchmarks: each measures this machine and writes its "
        "section of docs/benchmarks.md (run from the repository root; `zoomq bench queue` measures the queue).")
    what = parser.add_subparsers(dest="what", required=True)
    p = what.add_parser("render", help="zoomq against diffusers and the machine's limit (full-size models)")
    p.add_argument("--quick", action="store_true", help="one repetition, 5 steps, 512 px only")
    p.add_argument("--repeats", type=_count, help="repetitions (default 3; medians are reported)")
    p.add_argument("--only", choices=("main", "fast"), help="one part: `main` (the modes against diffusers and "
                   "the machine's limit, the worker figures) or `fast` (SD-Turbo, the tiny decoder); default both")
    p.add_argument("--tiny", action="store_true", help="the miniature models: checks the benchmark itself")
    _common(p)
    p.set_defaults(run=run_render)
    p = what.add_parser("split", help="a zoom keyframe on two workers sharing its guided steps, against one, "
                        "alone and with DeepCache; a whole 5-keyframe video likewise (full-size inpainting model)")
    p.add_argument("--repeats", type=_count, default=1, help="runs of each setup (default 1; medians are reported)")
    p.add_argument("--steps", type=_count, help="steps per keyframe (default the model's: 20)")
    p.add_argument("--frames", type=_count, help="the whole video's frames between keyframes (default 30)")
    p.add_argument("--tiny", action="store_true", help="the miniature inpainting model: checks the benchmark itself")
    _common(p)
    p.set_defaults(run=run_split)
    p = what.add_parser("deepcache", help="DeepCache's feature caching: the shallow branch's share of the UNet, "
                        "text-to-image and a zoom keyframe at --cache-interval 1, 2, 3, 5 (full-size models)")
    p.add_argument("--repeats", type=_count, default=1, help="runs of each figure (default 1; medians are reported)")
    p.add_argument("--steps", type=_count, help="steps per render (default 20)")
    p.add_argument("--tiny", action="store_true", help="the miniature models: checks the benchmark itself")
    _common(p)
    p.set_defaults(run=run_deepcache)
    p = what.add_parser("scaling", help="the full-size UNet's call by thread count: batch 2 against 1 (the guidance "
                        "split), whole against DeepCache's shallow branch, and two half-size workers side by side")
    p.add_argument("--threads", type=_thread_counts, help="comma-separated thread counts (default 1, 2, 4, ... "
                   "up to this machine's CPUs)")
    p.add_argument("--repeats", type=_count, default=3, help="calls timed per figure, the best reported (default 3)")
    p.add_argument("--tiny", action="store_true", help="the miniature UNet: checks the benchmark itself")
    _common(p, "where the UNet is cached (default $ZOOMQ_CACHE_DIR/bench-models)")
    p.set_defaults(run=run_scaling)
    return parser


def say(message: str) -> None:
    print(f"benchmarks: {message}", flush=True)


def run_render(args: argparse.Namespace) -> None:
    from benchmarks import peer_render

    result = peer_render.run(args.out, quick=args.quick, repeats=args.repeats, models_dir=args.models_dir, say=say,
                             tiny=args.tiny, only=args.only)
    if "main" in result:
        for mode, figures in result["main"]["medians"].items():
            print(mode + ": " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
    if "fast" in result:
        for key, figures in result["fast"]["medians"].items():
            print(key + ": " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()))
        e2e = result["fast"]["worker"]
        print(f"fast tier: request to PNG in a warm worker, median {e2e['median']:.2f} s, best {e2e['best']:.2f} s")


def run_split(args: argparse.Namespace) -> None:
    from benchmarks import split_gain

    result = split_gain.run(args.out, tiny=args.tiny, repeats=args.repeats, steps=args.steps,
                            models_dir=args.models_dir, say=say, frames=args.frames)
    f, whole = result["figures"], result["whole"]
    print(f"keyframe: one worker {f['one_worker_s']:.2f} s, two workers {f['two_workers_s']:.2f} s "
          f"({f['ratio']:.2f}x), with DeepCache {split_gain.CACHE} {f['both_s']:.2f} s ({f['both_ratio']:.2f}x); "
          f"exchange {100 * f['exchange_share']:.1f} % of the keyframe")
    print(f"whole {split_gain.WHOLE}-keyframe video: one worker {whole['one']:.1f} s, two with both "
          f"{whole['two']:.1f} s")


def run_deepcache(args: argparse.Namespace) -> None:
    from benchmarks import deepcache_gain

    result = deepcache_gain.run(args.out, tiny=args.tiny, repeats=args.repeats, steps=args.steps,
                                models_dir=args.models_dir, say=say)
    m = result["medians"]
    print(f"shallow branch {100 * m['shallow_share']:.0f} % of the UNet call; text-to-image at interval 3: "
          f"{deepcache_gain.ratio(m, 't2i', 3):.2f}x, keyframe {deepcache_gain.ratio(m, 'keyframe', 3):.2f}x")


def run_scaling(args: argparse.Namespace) -> None:
    from benchmarks import unet_scaling

    result = unet_scaling.run(args.out, threads=args.threads, repeats=args.repeats, tiny=args.tiny,
                              models_dir=args.models_dir, say=say)
    for threads, row in result["rows"].items():
        print(f"{threads} thread(s): split bound {unet_scaling.split_bound(row):.2f}x, with DeepCache "
              f"{unet_scaling.CACHE} {unet_scaling.both_bound(row):.2f}x, "
              f"shallow share {row['shallow_2'] / row['full_2']:.2f}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark ``argv`` names; exit code 0, 2 for bad options, 1 for a zoomq error."""
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")  # library chatter (tracer warnings, hub notices) off the report
    for name, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                        ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(name, value)  # for the probes and workers this starts too
    try:
        args.run(args)
    except ZoomqError as e:
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

