"""All configuration in one place: ``ZOOMQ_*`` environment variables with documented defaults.

``settings()`` reads the environment each time it is called, so tests and subprocesses can change
it freely. The README's configuration table lists exactly the variables declared here (a test
checks that).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zoomq.errors import InvalidParameter


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    doc: str


VARIABLES: tuple[Variable, ...] = (
    Variable("ZOOMQ_DEVICE", "CPU", "OpenVINO device that compiles and runs the models."),
    Variable(
        "ZOOMQ_INFERENCE_PRECISION",
        "auto",
        "OpenVINO inference precision: `auto` (the device's fastest: bf16 on CPUs with AVX-512 BF16 "
        "or AMX, else f32), `f32`, `bf16` or `f16`.",
    ),
    Variable("ZOOMQ_THREADS", "0", "OpenVINO threads per model; 0 uses every core."),
    Variable(
        "ZOOMQ_CACHE_DIR",
        "~/.cache/zoomq",
        "Where compiled models are cached (`ov-cache/<device>-<precision>/`), so later loads skip compilation.",
    ),
)

_PRECISIONS = ("auto", "f32", "bf16", "f16")


@dataclass(frozen=True)
class Settings:
    device: str
    inference_precision: str
    threads: int
    cache_dir: Path

    @property
    def ov_cache_dir(self) -> Path:
        # One folder per device and precision: OpenVINO 2026.4 gives a blob compiled with an f32
        # hint and one compiled with a bf16 hint the same cache key, and loading the f32 blob
        # under the bf16 hint rendered NaN on this project's machines.
        return self.cache_dir / "ov-cache" / f"{self.device}-{self.inference_precision}".lower()


def _get(name: str) -> str:
    default = next(v.default for v in VARIABLES if v.name == name)
    return os.environ.get(name, "").strip() or default


def settings() -> Settings:
    """The current settings, validated; a bad value raises ``InvalidParameter`` naming the variable."""
    precision = _get("ZOOMQ_INFERENCE_PRECISION").lower()
    if precision not in _PRECISIONS:
        raise InvalidParameter(
            "ZOOMQ_INFERENCE_PRECISION", precision, f"must be one of {', '.join(_PRECISIONS)}"
        )
    raw_threads = _get("ZOOMQ_THREADS")
    try:
        threads = int(raw_threads)
    except ValueError:
        threads = -1
    if threads < 0:
        raise InvalidParameter("ZOOMQ_THREADS", raw_threads, "must be a whole number ≥ 0 (0 = all cores)")
    return Settings(
        device=_get("ZOOMQ_DEVICE"),
        inference_precision=precision,
        threads=threads,
        cache_dir=Path(os.path.expanduser(_get("ZOOMQ_CACHE_DIR"))),
    )
