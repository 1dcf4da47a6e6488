"""What a zoom job is asked to do, checked up front, and what each keyframe gets from it.

The same checks serve the CLI, the producer and the web API. Prompts can change from given
keyframes on (a prompt schedule); every keyframe's seed is derived from the job seed, so the same
job renders the same video, and any one keyframe can be rendered again on its own.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from zoomq.errors import Checks, InvalidParameter
from zoomq.render import schedulers
from zoomq.render.request import (
    STANDARD_DEFAULTS,
    check_cache_branch,
    check_cache_interval,
    check_decoder,
    check_guidance,
    check_guidance_cutoff,
    check_seed,
    check_size,
    check_steps,
    check_text,
    number,
)

DIRECTIONS = ("out", "in")


class DefaultSeam(int):
    """The seam nobody asked for: 16 wherever it is read, but ``validate`` narrows it (with a
    warning) where size and mask width leave less room, while a seam someone gave must fit."""

    def __repr__(self) -> str:
        return int.__repr__(self)


DEFAULT_SEAM = DefaultSeam(16)


@dataclass(frozen=True)
class PromptChange:
    """From keyframe ``keyframe`` on, render with these prompts."""

    keyframe: int
    prompt: str
    negative_prompt: str | None = None  # None keeps the previous negative prompt


@dataclass(frozen=True)
class ZoomSettings:
    prompt: str
    negative_prompt: str = ""
    keyframes: int = 3
    size: int = 512
    mask_width: int = 128
    interpolation_frames: int = 30
    fps: int = 30
    direction: str = "out"
    seed: int | None = None
    steps: int | None = None  # None: the model's default (see validate)
    guidance: float | None = None  # None: the model's default
    guidance_cutoff: float = 1.0
    scheduler: str = "default"
    decoder: str = "full"  # of every keyframe: "tiny" (TAESD) when the model carries it
    cache_interval: int = 1  # of every keyframe: DeepCache's interval (1 = off; render.deepcache)
    cache_branch: int = 0
    seam: int | None = DEFAULT_SEAM  # None, too, means the default
    schedule: tuple[PromptChange, ...] = ()
    gif: bool = False
    init_image: str | None = field(default=None)  # path of keyframe 0, when given
    warnings: tuple[str, ...] = ()  # what validate() changed on its own; travels with the job

    def with_seed(self) -> ZoomSettings:
        return self if self.seed is not None else replace(self, seed=secrets.randbelow(2**32))

    @property
    def total_frames(self) -> int:
        return (self.keyframes - 1) * self.interpolation_frames + 1

    def keyframe_seed(self, k: int) -> int:
        """Seed of keyframe k: a hash of the job seed and k (neighbouring jobs share nothing)."""
        digest = hashlib.sha256(f"zoomq-keyframe:{self.seed}:{k}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    def prompts(self, k: int) -> tuple[str, str]:
        """(prompt, negative prompt) in force at keyframe k."""
        prompt, negative = self.prompt, self.negative_prompt
        for change in self.schedule:
            if change.keyframe <= k:
                prompt = change.prompt
                if change.negative_prompt is not None:
                    negative = change.negative_prompt
        return prompt, negative

    def to_dict(self) -> dict:
        data = asdict(self)
        data["schedule"] = [asdict(c) for c in self.schedule]
        data["warnings"] = list(self.warnings)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ZoomSettings:
        data = dict(data)
        data["schedule"] = tuple(PromptChange(**c) for c in data.get("schedule", ()))
        data["warnings"] = tuple(data.get("warnings", ()))
        return cls(**data)


def parse_schedule(raw, param: str = "prompt_schedule") -> tuple[PromptChange, ...]:
    """A schedule from JSON data: ``[{"keyframe": 4, "prompt": "...", "negative_prompt": "..."}]``."""
    if not isinstance(raw, list):
        raise InvalidParameter(param, type(raw).__name__, 'must be a JSON list of {"keyframe": K, "prompt": "..."}')
    changes = []
    for i, item in enumerate(raw):
        where = f"{param}[{i}]"
        if not isinstance(item, dict) or set(item) - {"keyframe", "prompt", "negative_prompt"}:
            raise InvalidParameter(
                where, item, 'must be an object with "keyframe", "prompt" and optionally "negative_prompt"'
            )
        keyframe = item.get("keyframe")
        if isinstance(keyframe, float) and keyframe.is_integer():  # JSON's 2.0 is the integer 2
            keyframe = int(keyframe)
        if isinstance(keyframe, bool) or not isinstance(keyframe, int) or keyframe < 0:
            raise InvalidParameter(f"{where}.keyframe", keyframe, "must be a whole number ≥ 0")
        if not isinstance(item.get("prompt"), str):
            raise InvalidParameter(f"{where}.prompt", item.get("prompt"), "must be text")
        negative = item.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise InvalidParameter(f"{where}.negative_prompt", negative, "must be text")
        changes.append(PromptChange(keyframe, item["prompt"], negative))
    keys = [c.keyframe for c in changes]
    if len(set(keys)) != len(keys):
        raise InvalidParameter(param, keys, "names a keyframe twice")
    return tuple(sorted(changes, key=lambda c: c.keyframe))


def load_schedule(path: Path | str) -> tuple[PromptChange, ...]:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise InvalidParameter("prompt_schedule", str(path), f"cannot be read ({e.strerror})") from None
    except ValueError as e:
        raise InvalidParameter("prompt_schedule", str(path), f"is not valid JSON ({e})") from None
    return parse_schedule(raw)


def _at_least(param: str, value, low: int, why: str = "") -> int:
    value = number(param, value, int)
    if value < low:
        raise InvalidParameter(param, value, f"must be at least {low}{why}")
    return value


def _mask_width(value, size: int) -> int:
    mask_width = number("mask_width", value, int)
    if not 8 <= mask_width < size / 2:
        raise InvalidParameter(
            "mask_width", mask_width, f"must be at least 8 and less than half the size ({size // 2})"
        )
    return mask_width


def _fps(value) -> int:
    fps = number("fps", value, int)
    if not 1 <= fps <= 120:
        raise InvalidParameter("fps", fps, "must be between 1 and 120")
    return fps


def _direction(value) -> str:
    if value not in DIRECTIONS:
        raise InvalidParameter("direction", value, "must be out or in")
    return value


def _seam(value, size: int, mask_width: int) -> tuple[int, tuple[str, ...]]:
    """The seam and any warning: the default shrinks to the largest that fits (a small size or a
    wide mask leaves no room for it), a given seam must fit."""
    inner = size - 2 * mask_width
    limit = inner // 4
    if value is None or isinstance(value, DefaultSeam):
        if DEFAULT_SEAM <= limit:
            return int(DEFAULT_SEAM), ()
        return limit, (f"seam: the default {DEFAULT_SEAM} px is too wide for size {size} with mask width "
                       f"{mask_width} (at most {limit}: a quarter of the {inner} px pasted square); using {limit} px; "
                       f"give a seam from 0 to {limit} to choose another",)
    seam = number("seam", value, int)
    if not 0 <= seam <= limit:
        raise InvalidParameter("seam", seam, f"must be between 0 and {limit} (a quarter of the pasted square)")
    return seam, ()


def _schedule_fits(schedule: tuple[PromptChange, ...], keyframes: int) -> None:
    for change in schedule:
        if change.keyframe >= keyframes:
            raise InvalidParameter(
                "prompt_schedule", change.keyframe, f"names a keyframe past the last one ({keyframes - 1})"
            )


def validate(s: ZoomSettings, defaults: dict | None = None) -> ZoomSettings:
    """Check every setting; returns the settings with a concrete seed and seam, steps and guidance
    left at None filled from ``defaults`` (the model's, ``Manifest.defaults``; without them
    SD2's 20 and 7.5), and in ``warnings`` what it chose for the caller. Raises
    ``InvalidParameter``, or ``InvalidParameters`` when several settings are wrong."""
    model = {**STANDARD_DEFAULTS, **(defaults or {})}
    checks = Checks()
    checks(check_text, "prompt", s.prompt)
    checks(check_text, "negative_prompt", s.negative_prompt)
    keyframes = checks(_at_least, "keyframes", s.keyframes, 2, " (a zoom runs from one keyframe to the next)")
    size = checks(check_size, "size", s.size)
    mask_width = checks(_mask_width, s.mask_width, size) if size is not None else None
    frames = checks(_at_least, "interpolation_frames", s.interpolation_frames, 1)
    fps = checks(_fps, s.fps)
    checks(_direction, s.direction)
    if not isinstance(s.gif, bool):  # JSON gives any type
        checks.add(InvalidParameter("gif", s.gif, "must be true or false"))
    steps = checks(check_steps, model["steps"] if s.steps is None else s.steps)
    guidance = checks(check_guidance, model["guidance"] if s.guidance is None else s.guidance)
    cutoff = checks(check_guidance_cutoff, s.guidance_cutoff)
    checks(schedulers.check_name, s.scheduler)
    checks(check_decoder, s.decoder)
    cache_interval = checks(check_cache_interval, s.cache_interval)
    cache_branch = checks(check_cache_branch, s.cache_branch)
    seam, notes = None, ()
    if mask_width is not None:
        seam, notes = checks(_seam, s.seam, size, mask_width) or (None, ())
    checks(check_seed, s.seed)
    if keyframes is not None:
        checks(_schedule_fits, s.schedule, keyframes)
    checks.raise_errors()
    assert mask_width is not None  # a missing or bad size raised above
    return replace(
        s, keyframes=keyframes, size=size, mask_width=mask_width, interpolation_frames=frames, fps=fps,
        steps=steps, guidance=guidance, guidance_cutoff=cutoff, seam=seam, cache_interval=cache_interval,
        # validating again adds nothing
        cache_branch=cache_branch, warnings=tuple(dict.fromkeys((*s.warnings, *notes))),
    ).with_seed()
