"""DeepCache (Ma et al., CVPR 2024) as a ``UNetCall``: the whole UNet every N-th call, keeping its
deep feature; the calls between run only the shallow branch on the kept feature.

It mirrors the ``DeepCache`` package's ``DeepCacheSDHelper`` with ``skip_mode="uniform"`` (what
diffusers documents): a call runs in full when the index of its timestep in the scheduler's list,
counted from the first call's, is a multiple of N. That is the loop's call index, except where a
scheduler repeats a timestep (PNDM's warm-up): the repeat counts as its first occurrence, as in
the package. Branch ``B`` is which layers run fresh (``model_prep.deepcache`` lists them).

Kept features are keyed by what each batch element is conditioned on (its text embedding), not by
its position: when guidance ends early the batch goes from 2 to 1 and the prompt's half of the
feature carries on; a worker running one half of a guided batch keeps just its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from zoomq.render.ov_models import CompiledParts


def _key(embedding: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(embedding).tobytes(), digest_size=16).digest()


class DeepCacheUNet:
    """The prepared ``unet`` (with its ``feature_B`` output) on full calls, ``unet_shallow_B`` between.
    ``timesteps``: the scheduler's whole list (where a render starts inside it, as image-to-image
    does, counting starts at the first call); None counts the loop's calls."""

    def __init__(self, parts: CompiledParts, interval: int, branch: int = 0,
                 timesteps: Sequence[float] | None = None):
        from zoomq.model.manifest import feature_output_name, shallow_part_name

        if interval < 2:
            raise ValueError(f"DeepCache interval {interval}: 1 is the plain UNet; use PlainUNet")
        self.parts = parts
        self.interval = interval
        self.branch = branch
        self.timesteps = None if timesteps is None else [float(t) for t in timesteps]
        self.feature_name = feature_output_name(branch)
        self.shallow_name = shallow_part_name(branch)
        self._start: int | None = None
        self._features: dict[bytes, np.ndarray] = {}
        #: call indices that ran the whole UNet, and those that ran the shallow branch
        self.full_calls: list[int] = []
        self.shallow_calls: list[int] = []

    def _position(self, t: torch.Tensor, call: int) -> int:
        if self.timesteps is None:
            return call
        value = float(t)
        return next((i for i, s in enumerate(self.timesteps) if s == value), call)

    def is_full(self, t: torch.Tensor, call: int) -> bool:
        """Whether this call runs the whole UNet (DeepCache's uniform schedule)."""
        position = self._position(t, call)
        if self._start is None:
            self._start = position
        return (position - self._start) % self.interval == 0

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, embeds: np.ndarray, call: int) -> torch.Tensor:
        timestep = np.array(float(t), dtype=np.float32)
        keys = [_key(e) for e in embeds]
        if self.is_full(t, call) or any(k not in self._features for k in keys):
            noise, feature = self.parts.run_outputs("unet", (self.feature_name,), sample=sample.numpy(),
                                                    timestep=timestep, encoder_hidden_states=embeds)
            for j, key in enumerate(keys):
                self._features[key] = feature[j : j + 1]
            self.full_calls.append(call)
        else:
            feature = np.concatenate([self._features[k] for k in keys])
            noise = self.parts.run(self.shallow_name, sample=sample.numpy(), timestep=timestep,
                                   encoder_hidden_states=embeds, feature=feature)
            self.shallow_calls.append(call)
        return torch.from_numpy(noise)
