"""A whole zoom in one process: the keyframe, segment and stitch units chained, with progress.

Memory stays flat in the length of the video: keyframes go to PNG files as they are made, and
each segment holds just its two keyframes while its frames stream into the encoder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zoomq.errors import RenderCancelled
from zoomq.render.pipeline import Renderer
from zoomq.render.request import check_decoder
from zoomq.zoom.keyframe import check_model, keyframe_name, render_keyframe
from zoomq.zoom.segment import frame_indices, render_segment, segment_name
from zoomq.zoom.settings import ZoomSettings, validate
from zoomq.zoom.stitch import keyframe_entry, stitch

#: ``progress(stage, done, total)`` with done/total counted in denoising steps plus frames;
#: returning False cancels.
ZoomProgress = Callable[[str, int, int], "bool | None"]


@dataclass
class ZoomResult:
    video: Path
    sidecar: dict
    keyframes_dir: Path


def keyframes_dir(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".keyframes")


def render_zoom(
    renderer: Renderer, settings: ZoomSettings, out: Path, progress: ZoomProgress | None = None
) -> ZoomResult:
    """Render the zoom video ``out`` (MP4), its keyframes beside it and its sidecar JSON; steps and
    guidance left at None are the model's defaults."""
    check_model(renderer)
    settings = validate(settings, renderer.defaults)
    check_decoder(settings.decoder, renderer.decoders)  # before any keyframe is written
    renderer.check_cache(settings.cache_interval, settings.cache_branch)  # DeepCache's parts, likewise
    out = Path(out)
    kf_dir = keyframes_dir(out)
    kf_dir.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.stem}.segments")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    steps = settings.steps
    assert steps is not None  # validate() filled in the model's default
    rendered = settings.keyframes - (1 if settings.init_image else 0)
    total = rendered * steps + settings.total_frames
    done = 0

    def report(stage: str) -> Callable[[int, int], bool]:
        base = done

        def inner(step: int, _total: int) -> bool:
            if progress is not None and progress(stage, base + step, total) is False:
                return False
            return True

        return inner

    try:
        recipes = []
        segments = []
        for k in range(settings.keyframes):
            path = kf_dir / keyframe_name(k)
            stage = f"keyframe {k + 1}/{settings.keyframes}"
            previous = kf_dir / keyframe_name(k - 1) if k else None
            recipe = render_keyframe(renderer, settings, k, previous, path, report(stage))
            done += 0 if recipe["mode"] == "init-image" else steps
            recipes.append(keyframe_entry(k, recipe, f"{kf_dir.name}/{path.name}"))
            if k:
                segment = work / segment_name(k - 1)
                render_segment(kf_dir / keyframe_name(k - 1), path, settings, k - 1, segment,
                               report(f"segment {k}/{settings.keyframes - 1}"))
                done += len(frame_indices(settings, k - 1))
                segments.append(segment)
        if progress is not None and progress("stitching", done, total) is False:
            raise RenderCancelled("zoom cancelled before stitching")
        model = {"sha256": renderer.manifest.sha256, "source": renderer.manifest.data.get("source")}
        sidecar = stitch(segments, settings, out, recipes, model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ZoomResult(video=out, sidecar=sidecar, keyframes_dir=kf_dir)
