"""The guidance batch shared with another worker: each runs one half of every guided UNet call.

A guided step runs the UNet on a batch of 2 (unconditional, conditional), and the UNet is
compute-bound on CPUs: batch 1 costs half of batch 2. ``SplitUNet`` sends the unconditional
half's model input over a ``Link`` to a helper, runs the conditional half itself meanwhile, and
joins the two predictions in the order the denoise loop expects. The leader keeps the scheduler,
so nothing can diverge: the helper only ever sees model inputs. When the link fails (no helper
came, the helper was lost or left), the leader runs the unconditional half itself from that call
on, and the render completes alone. Render core only: no Redis, no Celery (see ``worker.split``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from zoomq.errors import LinkLost

if TYPE_CHECKING:  # torch is imported by the render itself: a worker's tasks module must not need it
    import torch

    from zoomq.render.unet_call import UNetCall


class Link(Protocol):
    """The leader's end of a split: a channel to one helper that runs unconditional halves."""

    def ask(self, call: int, t: torch.Tensor, sample: np.ndarray, embeds: np.ndarray | None,
            timesteps: np.ndarray | None = None) -> None:
        """Hand the helper call ``call``'s unconditional input (``embeds`` when they changed, and
        with the first call the scheduler's ``timesteps`` a feature cache counts by, if any);
        ``LinkLost`` when there is no helper."""

    def answer(self, call: int, timeout: float) -> np.ndarray:
        """The helper's prediction for ``call``, waiting at most ``timeout`` s; ``LinkLost`` past it."""

    def close(self, reason: str) -> None:
        """Tell the helper to stop (the render ended, was cancelled, or goes on alone)."""


@dataclass(frozen=True)
class Patience:
    """How long the leader waits for a helper's half beyond its own: ``factor`` times its own
    half's time, never less than ``floor`` s (``first`` s for the first call, where the helper may
    still be compiling). Production steps take seconds; the miniature models' take milliseconds."""

    floor: float = 10.0
    first: float = 45.0
    factor: float = 3.0

    def wait(self, own_seconds: float, first: bool) -> float:
        return max(self.first if first else self.floor, self.factor * own_seconds)


@dataclass
class SplitRecord:
    """What happened to a split, for the job record and the benchmark."""

    split_calls: int = 0  # guided calls whose unconditional half the helper ran
    alone_calls: int = 0  # guided calls the leader ran whole after the link failed
    exchange_seconds: float = 0.0  # sending the input plus waiting for the answer, past the own half
    own_seconds: float = 0.0  # the leader's own halves of split calls
    alone_from: int | None = None  # the call index from which the leader went on alone
    reason: str = ""  # why it went on alone


class SplitUNet:
    """Runs guided calls with the unconditional half on a helper (see the module docstring).

    ``inner`` runs the conditional half (the render's own UNetCall), and the unconditional one too
    once the leader is alone: a stateful kind keeps its state per half (DeepCache keys its features
    by embedding). ``on_alone(call, reason)`` is told once. Unguided calls (batch 1: guidance off,
    or past ``guidance_cutoff``) run locally and end the split at once, since guided calls come
    first and never return."""

    def __init__(self, inner: UNetCall, link: Link, patience: Patience = Patience(),
                 on_alone: Callable[[int, str], None] | None = None):
        self.inner, self.link, self.patience = inner, link, patience
        self.on_alone = on_alone
        self.record = SplitRecord()
        self._embeds_sent: np.ndarray | None = None
        self._alone = False
        self._first = True
        self._halved = False  # whether ``inner`` has run a half (batch 1) yet

    @property
    def alone(self) -> bool:
        return self._alone

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, embeds: np.ndarray, call: int) -> torch.Tensor:
        import torch

        if sample.shape[0] != 2:  # unguided: nothing to share, and no guided call follows
            if not self._alone:
                self._end("guidance ended")
            return self.inner(sample, t, embeds, call)
        if self._alone:
            return self._whole(sample, t, embeds, call)
        began = time.perf_counter()
        uncond_embeds = np.ascontiguousarray(embeds[:1])
        fresh = self._embeds_sent is None or not np.array_equal(self._embeds_sent, uncond_embeds)
        # A feature cache counts calls by the scheduler's timesteps (PNDM repeats one): the
        # helper's must count the same way.
        timesteps = getattr(self.inner, "timesteps", None) if self._first else None
        try:
            self.link.ask(call, t, sample[:1].numpy(), uncond_embeds if fresh else None,
                          None if timesteps is None else np.asarray(timesteps, dtype=np.float64))
        except LinkLost as e:
            self._go_alone(call, str(e))
            return self._whole(sample, t, embeds, call)
        if fresh:
            self._embeds_sent = uncond_embeds
        sent = time.perf_counter()
        self._halved = True
        cond = self.inner(sample[1:], t, embeds[1:], call)
        own = time.perf_counter() - sent
        try:
            uncond = self.link.answer(call, self.patience.wait(own, self._first))
        except LinkLost as e:
            self._go_alone(call, str(e))
            return torch.cat([self.inner(sample[:1], t, embeds[:1], call), cond])
        self._first = False
        r = self.record
        r.split_calls += 1
        r.own_seconds += own
        r.exchange_seconds += (time.perf_counter() - began) - own
        return torch.cat([torch.from_numpy(uncond).to(cond.dtype), cond])

    def close(self, reason: str = "render ended") -> None:
        """End the split, if it still runs (idempotent)."""
        if not self._alone:
            self._end(reason)

    # -- alone --------------------------------------------------------------------------------

    def _whole(self, sample, t, embeds, call) -> torch.Tensor:
        """A guided call run here. Before any half ran, exactly as unsplit (batch 2: a helper that
        never came changes nothing); after, both halves at batch 1, as the split ran them."""
        import torch

        self.record.alone_calls += 1
        if not self._halved:
            return self.inner(sample, t, embeds, call)
        cond = self.inner(sample[1:], t, embeds[1:], call)
        return torch.cat([self.inner(sample[:1], t, embeds[:1], call), cond])

    def _go_alone(self, call: int, reason: str) -> None:
        self.record.alone_from, self.record.reason = call, reason
        self._end(f"the leader goes on alone: {reason}")
        if self.on_alone is not None:
            self.on_alone(call, reason)

    def _end(self, reason: str) -> None:
        self._alone = True
        try:
            self.link.close(reason)
        except LinkLost:
            pass
