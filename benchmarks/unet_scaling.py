"""``python -m benchmarks scaling``: the full-size UNet's call time by thread count, batch and branch.

What the two ways of making one job faster can gain on a node of this many cores, in OpenVINO on
the full-size inpainting UNet (random weights), 512 px, at the precision ``auto`` chooses:
batch 2 (a guided step) against batch 1 (the half each worker of a guidance split runs), and the
whole UNet against DeepCache's shallow branch, at each thread count; then the node's cores as one
worker at batch 2 against two workers of half the threads each running batch 1 at the same time
(a split inside one node). Where no benchmark has prepared the whole inpainting model, only the
UNet is built (``cached_unet``), which takes minutes; ``python -m benchmarks split`` measures
whole keyframes through the queue.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.probe import best_seconds
from zoomq.model_prep.bench_models import cached_unet
from zoomq.node.bench_report import machine, write_section

BRANCH = 0  # DeepCache's default branch, the one ``zoomq prepare`` always exports
CACHE = 3  # the interval the combined bound is given for (DeepCache's and diffusers' example)
TEXT_HIDDEN, TEXT_LEN = 1024, 77


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the node's CPUs, and the CPUs themselves: largest first."""
    cpus = cpus or usable_cpus()
    counts = {cpus}
    n = 1
    while n < cpus:
        counts.add(n)
        n *= 2
    return sorted(counts, reverse=True)


def _inputs(batch: int, latent: int, hidden: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {"sample": rng.standard_normal([batch, 9, latent, latent], dtype=np.float32),
            "timestep": np.array(500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal([batch, TEXT_LEN, hidden], dtype=np.float32)}


def measure(folder: Path, threads: int, precision: str, *, latent: int, hidden: int, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of one call: ``full_B`` and ``shallow_B`` for batch B = 2, 1."""
    from zoomq.config import settings
    from zoomq.model.manifest import feature_output_name, shallow_part_name
    from zoomq.render.ov_models import CompiledParts

    s = replace(settings(), threads=threads, inference_precision=precision, compile_cache="off")
    compiled = CompiledParts(folder, s)
    figures = {}
    for batch in (2, 1):
        inputs = _inputs(batch, latent, hidden)
        _, feature = compiled.run_outputs("unet", (feature_output_name(BRANCH),), **inputs)
        figures[f"full_{batch}"] = best_seconds(partial(compiled.run, "unet", **inputs), repeats)
        figures[f"shallow_{batch}"] = best_seconds(
            partial(compiled.run, shallow_part_name(BRANCH), **inputs, feature=feature), repeats)
    return figures


def _side_by_side_child(folder: str, threads: int, precision: str, latent: int, hidden: int, calls: int,
                        barrier, results) -> None:
    from zoomq.config import settings
    from zoomq.render.ov_models import CompiledParts

    s = replace(settings(), threads=threads, inference_precision=precision, compile_cache="off")
    compiled = CompiledParts(Path(folder), s)
    inputs = _inputs(1, latent, hidden)
    compiled.run("unet", **inputs)  # compiles and allocates before the two start together
    barrier.wait()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        compiled.run("unet", **inputs)
        times.append(time.perf_counter() - t0)
    results.put(statistics.median(times))


def side_by_side(folder: Path, threads: int, precision: str, *, latent: int, hidden: int, calls: int) -> list[float]:
    """Median seconds per batch-1 call of two processes of ``threads`` threads each, running at once."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # never fork a process that holds OpenVINO objects
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_side_by_side_child,
                         args=(str(folder), threads, precision, latent, hidden, calls, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    medians: list[float] = []
    try:
        while len(medians) < len(procs):
            try:
                medians.append(results.get(timeout=5))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:  # the other would wait at the barrier for ever
                    raise RuntimeError(f"a side-by-side process failed with exit code {failed[0]}") from None
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return sorted(medians)


def run(out: Path, *, threads: list[int] | None = None, repeats: int = 3, tiny: bool = False,
        models_dir: Path | None = None, say: Callable[[str], None] = print) -> dict:
    """Measure, write the ``scaling`` section of ``out`` and ``bench-scaling.json`` beside it."""
    from zoomq.config import settings
    from zoomq.render import precision as prec

    started = time.time()
    s = settings()
    folder = cached_unet(models_dir or s.cache_dir / "bench-models", full=not tiny, branch=BRANCH, say=say)
    chosen = prec.resolve(replace(s, inference_precision="auto"))
    latent, hidden = (8, 32) if tiny else (64, TEXT_HIDDEN)
    cpus = usable_cpus()
    threads = threads or default_threads(cpus)
    result: dict[str, Any] = {"date": date.today().isoformat(), "tiny": tiny, "precision": chosen, "cpus": cpus,
                              "repeats": repeats, "size": latent * 8, "rows": {}}
    say(f"UNet calls at {latent * 8} px, {chosen}, threads {threads}, best of {repeats}")

    def row(t: int) -> dict:
        if t not in result["rows"]:
            r = result["rows"][t] = measure(folder, t, chosen, latent=latent, hidden=hidden, repeats=repeats)
            say(f"{t} thread(s): batch 2 {r['full_2']:.3f} s, batch 1 {r['full_1']:.3f} s, "
                f"shallow {r['shallow_2']:.3f} / {r['shallow_1']:.3f} s")
        return result["rows"][t]

    for t in threads:
        row(t)
        if t == threads[0] and cpus >= 2:  # the node as a whole early on: a short loan may end before the rest
            half = cpus // 2
            pair = side_by_side(folder, half, chosen, latent=latent, hidden=hidden, calls=max(repeats, 3))
            whole = row(cpus)["full_2"]
            result["side_by_side"] = {"threads": half, "batch_1": pair, "one_worker_batch_2": whole}
            say(f"two {half}-thread processes at once, batch 1: {pair[0]:.3f} / {pair[1]:.3f} s a call, "
                f"against {whole:.3f} s at batch 2 on all {cpus}")
    result["seconds"] = time.time() - started
    _report(out, result)
    (Path(out).parent / "bench-scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def split_bound(row: dict) -> float:
    """A guided step split over two such workers against one, before the exchange: batch 1 / batch 2."""
    return row["full_1"] / row["full_2"]


def both_bound(row: dict, interval: int = CACHE) -> float:
    """Split and DeepCache together against neither, over ``interval`` steps, UNet only."""
    split = row["full_1"] + (interval - 1) * row["shallow_1"]
    return split / (interval * row["full_2"])


def _report(out: Path, result: dict) -> None:
    rows = ["| threads | batch 2 s | batch 1 s | split bound (batch 1 / 2) | shallow branch, batch 2 s (share) "
            f"| shallow branch, batch 1 s (share) | split and DeepCache {CACHE}, bound |",
            "|---|---|---|---|---|---|---|"]
    for t, r in sorted(result["rows"].items(), key=lambda kv: -int(kv[0])):
        rows.append(f"| {t} | {r['full_2']:.3f} | {r['full_1']:.3f} | {split_bound(r):.2f}× "
                    f"| {r['shallow_2']:.3f} ({100 * r['shallow_2'] / r['full_2']:.0f} %) "
                    f"| {r['shallow_1']:.3f} ({100 * r['shallow_1'] / r['full_1']:.0f} %) | {both_bound(r):.2f}× |")
    pair = result.get("side_by_side")
    inside = ""
    if pair:
        ratio = pair["batch_1"][1] / pair["one_worker_batch_2"]
        inside = (f"\n\nInside one node: all {result['cpus']} threads as one worker take "
                  f"{pair['one_worker_batch_2']:.3f} s for a batch-2 call; two workers of {pair['threads']} "
                  f"thread(s) each, running batch 1 at the same time, take {pair['batch_1'][0]:.3f} and "
                  f"{pair['batch_1'][1]:.3f} s a call. So a split step inside one node takes **{ratio:.2f}×** "
                  f"the unsplit one: only what two narrow workers gain over one wide one. Across two nodes of "
                  f"{pair['threads']} thread(s) each it takes the split bound of that row.")
    unet = "miniature" if result["tiny"] else "full-size"
    note = ("\n\n**Miniature UNet: these figures check the benchmark itself, not the machine.**"
            if result["tiny"] else "")
    body = f"""## UNet scaling: threads, batch and branch (`python -m benchmarks scaling`)

Measured {result['date']} on {machine()}, {result['precision']}: the {unet} SD2 inpainting UNet (random weights)
at {result['size']} px in OpenVINO, one call, best of {result['repeats']} after a warm-up, every
thread count in this run. The split bound is what a guidance split over two workers of that many threads
could reach on a step (each runs batch 1), before the exchange; the last column adds DeepCache at
interval {CACHE} (one whole and {CACHE - 1} shallow calls at batch 1, against {CACHE} whole calls at batch 2).

{chr(10).join(rows)}{inside}

Rerun: `python -m benchmarks scaling` (this run took {result['seconds'] / 60:.0f} min; `--threads 16,8` chooses
the counts).{note}
"""
    write_section(out, "scaling", body)
