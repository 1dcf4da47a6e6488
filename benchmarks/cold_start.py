"""A worker's cold start (issue 27): from launching ``zoomq worker`` with a job already waiting to
the start of that job's first denoising step, on the full-size 512 px text-to-image model, and
where the time goes.

    python -m benchmarks.cold_start             # the full-size model: run it alone on the machine
    python -m benchmarks.cold_start --tiny      # the miniature model: checks the harness, not the machine

Launches, one at a time on a private Redis: cold (``ZOOMQ_COMPILE_CACHE=off``), then the default
settings with an empty compile cache (the launch that stores the warm-up's blobs), then the default
settings with the cache warm, ``--repeats`` times. For each: seconds from the launch to the warm-up's
beginning (Python, Celery and the pool's fork), to the model compiled and the render core imported
(the two run at once), to the first step's start (its text encoding done) and end.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

from benchmarks.worker_figures import first_step
from zoomq.config import settings
from zoomq.model_prep.bench_models import cached_model
from zoomq.node.processes import Fleet
from zoomq.producer import Producer
from zoomq.render import precision
from zoomq.render.precision import cpu_label

TARGET_S = 5.0


def _row(name: str, launch: dict) -> str:
    t = launch["timeline"]
    parts = [f"{t.get(k, float('nan')):5.1f}" for k in ("warm-up begins", "model compiled", "render core imported")]
    return (f"| {name} | {' | '.join(parts)} | {launch['denoise_start']:5.1f} | {launch['first_step']:5.1f} | "
            f"{launch.get('compile', float('nan')):.1f} / {launch.get('import', float('nan')):.1f} |")


def run(tiny: bool, repeats: int, steps: int, models_dir: Path | None) -> dict:
    model = cached_model(models_dir or settings().cache_dir / "bench-models", "t2i", full=not tiny, say=print)
    launches: dict[str, list[dict]] = {"cold": [], "storing": [], "warm": []}
    with Fleet([model], start_timeout=600) as fleet:
        cache = fleet.folder / "cache"
        cache.mkdir()
        # The precision measurement (auto) is a node's one-time cost, not a start's: made here, first.
        print(f"precision: {precision.resolve(replace(fleet.settings, cache_dir=cache))}")
        producer = Producer(fleet.settings)
        plan = [("cold", "off"), ("storing", "auto")] + [("warm", "auto")] * repeats
        for name, mode in plan:
            launch = first_step(fleet, producer, model, cache, steps, compile_cache=mode)
            launches[name].append(launch)
            timeline = {k: round(v, 2) for k, v in launch["timeline"].items()}
            print(f"{name}: first step begins {launch['denoise_start']:.2f} s after launch, ends "
                  f"{launch['first_step']:.2f} s; {json.dumps(timeline)}")
    warm = statistics.median(launch["denoise_start"] for launch in launches["warm"])
    print("\n| launch | warm-up begins | model compiled | render core imported | first step begins | first step "
          "ends | compile / import (s, at once) |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in launches.items():
        for i, launch in enumerate(runs):
            print(_row(f"{name}{f' {i + 1}' if len(runs) > 1 else ''}", launch))
    print(f"\nwarm compile cache, median of {repeats}: the first step begins {warm:.2f} s after launch "
          f"(target ≤ {TARGET_S:.0f} s: {'met' if warm <= TARGET_S else 'NOT met'}) on {cpu_label()}")
    return {"model": "miniature" if tiny else "full-size", "cpu": cpu_label(), "steps": steps,
            "launches": launches, "warm_median_denoise_start": warm}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cold_start", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the miniature model: checks the harness, not the machine")
    p.add_argument("--repeats", type=int, default=3, help="launches with the compile cache warm (default 3)")
    p.add_argument("--steps", type=int, default=2, help="steps of each launch's job (default 2)")
    p.add_argument("--models-dir", type=Path,
                   help="where the models are cached (default $ZOOMQ_CACHE_DIR/bench-models)")
    p.add_argument("--json", type=Path, help="write the figures there")
    args = p.parse_args(argv)
    result = run(args.tiny, args.repeats, args.steps, args.models_dir)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
