"""The modes the render benchmark sets against each other: diffusers on PyTorch and zoomq's settings."""

from __future__ import annotations

from dataclasses import dataclass

UNET_GFLOP = {512: 804, 768: 2149}  # one batch-1 pass (DESIGN.md)
REFERENCE = "diffusers bf16"


@dataclass(frozen=True)
class Mode:
    name: str
    engine: str  # diffusers | zoomq
    precision: str  # diffusers: fp32 | bf16; zoomq: f32 | bf16 | auto
    weights: str = "fp16"  # zoomq model: fp16 | int8-hybrid
    guidance_cutoff: float = 1.0
    works: tuple[str, ...] = ("unet", "t2i", "keyframe")
    note: str = ""


MODES = (
    Mode("diffusers fp32", "diffusers", "fp32"),
    Mode(REFERENCE, "diffusers", "bf16", note="the reference: torch.autocast(bfloat16)"),
    Mode("zoomq f32", "zoomq", "f32", note="exact: parity with diffusers at f32"),
    Mode("zoomq default", "zoomq", "auto",
         note="bf16 on CPUs with AVX-512 BF16 or AMX; the picture moves by bf16 rounding only"),
    Mode("zoomq int8-hybrid", "zoomq", "auto", weights="int8-hybrid",
         note="`zoomq prepare --weights int8-hybrid`"),
    Mode("zoomq guidance 0.4", "zoomq", "auto", guidance_cutoff=0.4, works=("t2i", "keyframe"),
         note="`--guidance-cutoff 0.4`: guidance for the first 40 % of the steps, as in diffusers' own "
              "example of ending it early (the UNet step is the default's)"),
    Mode("zoomq fast", "zoomq", "auto", weights="int8-hybrid", guidance_cutoff=0.4, works=("t2i", "keyframe"),
         note="int8-hybrid + `--guidance-cutoff 0.4`"),
)


def modes_for(auto: str) -> tuple[tuple[Mode, ...], str]:
    """The modes worth running on this CPU, and the one the others are set against: diffusers bf16
    where the CPU computes bf16 (``auto`` chose it), else diffusers fp32 — without AVX-512 BF16 or
    AMX, PyTorch's bf16 convolutions measured 160× slower than its f32 (an AVX2 EPYC), a mode no
    user would run and one that would take hours."""
    if auto == "bf16":
        return MODES, REFERENCE
    return tuple(m for m in MODES if not (m.engine == "diffusers" and m.precision == "bf16")), "diffusers fp32"
