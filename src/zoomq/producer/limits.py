"""Per-job limits an operator sets for the queue (``ZOOMQ_MAX_*``): how much work one request may ask.

They bind everything that enqueues (the web API, the producer, ``zoomq submit``); a local
``zoomq render`` runs on its owner's own machine and is bound only by what the models can do.
Each refusal names the parameter, the limit and the variable that sets it.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoomq.config import Settings
from zoomq.errors import Checks, InvalidParameter
from zoomq.render.request import RenderRequest
from zoomq.zoom.settings import ZoomSettings


@dataclass(frozen=True)
class Limits:
    steps: int
    pixels: int
    keyframes: int
    interpolation_frames: int
    frames: int
    prompt: int

    @classmethod
    def of(cls, s: Settings) -> Limits:
        return cls(s.max_steps, s.max_pixels, s.max_keyframes, s.max_interpolation_frames, s.max_frames, s.max_prompt)


def _at_most(param: str, value, limit: int, variable: str, what: str, shown=None) -> None:
    if value > limit:
        raise InvalidParameter(param, value if shown is None else shown,
                               f"is above this server's limit of {limit} {what} ({variable})")


def _prompt(param: str, text, limit: int) -> None:
    if isinstance(text, str) and len(text) > limit:
        raise InvalidParameter(param, f"<{len(text)} characters>",
                               f"is too long: at most {limit} characters (ZOOMQ_MAX_PROMPT)")


def check_image(request: RenderRequest, limits: Limits) -> None:
    """Raise ``InvalidParameter(s)`` when a validated image request exceeds ``limits``."""
    checks = Checks()
    checks(_prompt, "prompt", request.prompt, limits.prompt)
    checks(_prompt, "negative_prompt", request.negative_prompt, limits.prompt)
    checks(_at_most, "steps", request.steps, limits.steps, "ZOOMQ_MAX_STEPS", "denoising steps")
    width, height = request.width, request.height
    assert width is not None and height is not None  # validation filled them in
    checks(_at_most, "width", width * height, limits.pixels, "ZOOMQ_MAX_PIXELS",
           "pixels per image", f"{width}x{height}")
    checks.raise_errors()


def check_zoom(s: ZoomSettings, limits: Limits) -> None:
    """Raise ``InvalidParameter(s)`` when validated zoom settings exceed ``limits``."""
    checks = Checks()
    checks(_prompt, "prompt", s.prompt, limits.prompt)
    checks(_prompt, "negative_prompt", s.negative_prompt, limits.prompt)
    for i, change in enumerate(s.schedule):
        checks(_prompt, f"prompt_schedule[{i}].prompt", change.prompt, limits.prompt)
        checks(_prompt, f"prompt_schedule[{i}].negative_prompt", change.negative_prompt, limits.prompt)
    checks(_at_most, "steps", s.steps, limits.steps, "ZOOMQ_MAX_STEPS", "denoising steps")
    checks(_at_most, "size", s.size * s.size, limits.pixels, "ZOOMQ_MAX_PIXELS", "pixels per keyframe",
           f"{s.size}x{s.size}")
    checks(_at_most, "keyframes", s.keyframes, limits.keyframes, "ZOOMQ_MAX_KEYFRAMES", "keyframes")
    checks(_at_most, "interpolation_frames", s.interpolation_frames, limits.interpolation_frames,
           "ZOOMQ_MAX_INTERPOLATION_FRAMES", "frames between keyframes")
    if not checks.errors:
        checks(_at_most, "interpolation_frames", s.total_frames, limits.frames, "ZOOMQ_MAX_FRAMES",
               "frames per video", f"{s.total_frames} frames ((keyframes - 1) × interpolation_frames + 1)")
    checks.raise_errors()
