"""How the denoise loop runs the UNet: one small object per way of running it.

``Renderer.render`` asks a ``UNetCall`` for each noise prediction, with the call's index in the
loop, and never looks inside. The plain one runs the prepared UNet as it is; other ways (feature
caching across steps, the guidance batch shared with another worker) are objects of their own
beside the loop, the way diffusers swaps attention processors without touching its pipelines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from zoomq.render.ov_models import CompiledParts


class UNetCall(Protocol):
    """One noise prediction: ``sample`` is the scaled model input (batch 2 when guided: the
    unconditional half first, as ``embeds``), ``call`` counts the loop's UNet calls from 0.
    One that holds something beyond the loop may also have ``close(reason)``: the renderer calls
    it once the loop ends, before decoding (a guidance split frees its helper there)."""

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, embeds: np.ndarray, call: int) -> torch.Tensor: ...


#: Given the render's own ``UNetCall``, return the one to use instead (a worker's guidance split).
WrapUNet = Callable[[UNetCall], UNetCall]


class PlainUNet:
    """The prepared UNet, every call in full."""

    def __init__(self, parts: CompiledParts):
        self.parts = parts

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, embeds: np.ndarray, call: int) -> torch.Tensor:
        out = self.parts.run("unet", sample=sample.numpy(), timestep=np.array(float(t), dtype=np.float32),
                             encoder_hidden_states=embeds)
        return torch.from_numpy(out)
