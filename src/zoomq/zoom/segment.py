"""Segment unit: the frames between keyframe k and k+1, streamed into one video file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from zoomq.errors import RenderCancelled
from zoomq.zoom import geometry, video
from zoomq.zoom.settings import ZoomSettings


def segment_name(k: int) -> str:
    return f"segment-{k:03d}.mp4"


def frame_indices(settings: ZoomSettings, k: int) -> list[int]:
    """Frame numbers j of segment k in playing order.

    Zooming out, segment k runs j = 0 … N-1 (j = N is the next segment's first frame); the last
    segment also ends on its outer keyframe. Zooming in plays every segment backwards.
    """
    last = k == settings.keyframes - 2
    indices = list(range(settings.interpolation_frames + (1 if last else 0)))
    return indices[::-1] if settings.direction == "in" else indices


def frames(inner: Image.Image, outer: Image.Image, settings: ZoomSettings, k: int) -> Iterator[Image.Image]:
    assert settings.seam is not None, "frames need validated settings (validate() sets the seam)"
    for j in frame_indices(settings, k):
        yield geometry.frame(inner, outer, settings.mask_width, j, settings.interpolation_frames, settings.seam)


def render_segment(
    inner_path: Path,
    outer_path: Path,
    settings: ZoomSettings,
    k: int,
    out: Path,
    progress: Callable[[int, int], bool | None] | None = None,
) -> int:
    """Encode segment k (keyframe files k and k+1) into ``out``; returns the number of frames."""
    with Image.open(inner_path) as f:
        inner = f.convert("RGB")
    with Image.open(outer_path) as f:
        outer = f.convert("RGB")
    total = len(frame_indices(settings, k))

    def counted() -> Iterator[Image.Image]:
        for i, image in enumerate(frames(inner, outer, settings, k)):
            yield image
            if progress is not None and progress(i + 1, total) is False:
                raise RenderCancelled(f"segment {k} cancelled after {i + 1} of {total} frames")

    return video.encode(counted(), out, settings.fps)
