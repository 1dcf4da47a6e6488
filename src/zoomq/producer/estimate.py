"""What a job will cost before it runs: its work (UNet evaluations, frames) and, from the rates the
cluster has measured on its model, the time it should take once a worker starts it.

The rates come from plain renders only (``Jobs.measure``): a render with DeepCache or a guidance
split does not run one whole UNet evaluation per counted one on one worker.

The rates are per megapixel (``zoomq.queue.stats.observe_rate``): a job at another size is scaled by its
pixel count, which is close for sizes near the measured one; attention grows faster than linearly,
so a much larger size takes longer than estimated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from zoomq.render.request import RenderRequest
from zoomq.zoom.settings import ZoomSettings


@dataclass(frozen=True)
class Work:
    unet_evaluations: int  # a guided step evaluates the UNet twice (prompt and negative prompt)
    denoising_steps: int
    images: int  # images or keyframes rendered
    frames: int  # video frames interpolated and encoded
    megapixels: float  # per image or frame
    shallow_evaluations: int = 0  # of unet_evaluations, those DeepCache answers with its shallow branch

    @property
    def unet_per_step(self) -> float:
        return self.unet_evaluations / self.denoising_steps if self.denoising_steps else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _evaluations(steps: int, guidance: float, cutoff: float) -> int:
    guided = math.ceil(cutoff * steps) if guidance > 1.0 else 0
    return steps + guided


def _shallow(steps: int, guidance: float, cutoff: float, interval: int) -> int:
    """Evaluations DeepCache's uniform schedule gives the shallow branch: every step but each
    ``interval``-th, counting a guided step's two."""
    if interval <= 1:
        return 0
    guided = math.ceil(cutoff * steps) if guidance > 1.0 else 0
    return sum(2 if i < guided else 1 for i in range(steps) if i % interval)


def image_work(request: RenderRequest) -> Work:
    """The work of a validated image request; image-to-image runs only ``strength`` of its steps."""
    total, guidance, width, height = request.steps, request.guidance, request.width, request.height
    # validation filled these in
    assert total is not None and guidance is not None and width is not None and height is not None
    steps = total if request.strength is None else min(int(total * request.strength), total)
    return Work(_evaluations(steps, guidance, request.guidance_cutoff), steps, 1, 0,
                width * height / 1e6,
                _shallow(steps, guidance, request.guidance_cutoff, request.cache_interval))


def zoom_work(s: ZoomSettings, has_init_image: bool) -> Work:
    """The work of validated zoom settings; a given init image is keyframe 0, not rendered."""
    steps, guidance = s.steps, s.guidance
    assert steps is not None and guidance is not None  # validation filled them in
    rendered = s.keyframes - (1 if has_init_image else 0)
    return Work(rendered * _evaluations(steps, guidance, s.guidance_cutoff), rendered * steps, rendered,
                s.total_frames, s.size * s.size / 1e6,
                rendered * _shallow(steps, guidance, s.guidance_cutoff, s.cache_interval))


def expected_seconds(work: Work, model: str, rates: dict[str, float]) -> tuple[float | None, str]:
    """(seconds, how they were found) from the cluster's measured ``rates`` for ``model``; None
    when a rate this work needs has never been measured."""
    missing = [what for what, needed in (("unet", work.unet_evaluations), ("frame", work.frames))
               if needed and what not in rates]
    if missing:
        names = " and ".join({"unet": "UNet evaluations", "frame": "video frames"}[m] for m in missing)
        return None, f"no rate measured yet for {names} on model {model!r}: run one job of this kind first"
    seconds = (work.unet_evaluations * rates.get("unet", 0.0) + work.frames * rates.get("frame", 0.0)) * work.megapixels
    parts = [f"{rates['unet']:.3g} s per UNet evaluation" if work.unet_evaluations else "",
             f"{rates['frame']:.3g} s per frame" if work.frames else ""]
    basis = ", ".join(p for p in parts if p) + f" per megapixel, measured on this cluster's recent jobs on {model!r}"
    if work.shallow_evaluations:
        basis += (f"; DeepCache answers {work.shallow_evaluations} of the {work.unet_evaluations} evaluations with "
                  "its shallow branch, counted here as whole ones: an upper bound")
    return round(seconds, 1), basis
