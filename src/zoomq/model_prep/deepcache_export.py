"""DeepCache's UNet parts as OpenVINO IR: the full UNet that also returns the deep feature to keep,
and the shallow UNet that takes it (``zoomq render ... --cache-interval N``; ``render.deepcache``).

Design, cheapest on disk and at compile time: the prepared ``unet`` part itself gains one extra
output per kept branch (``feature_B``: a value the UNet computes anyway), so the whole UNet is
stored and compiled once, as before; each branch adds one small part, ``unet_shallow_B``, holding
only the shallow layers' weights (branch 0 of SD2: conv_in, the last up block's last ResNet and
transformer, the output head; about 3 % of the UNet's weights). A plain render runs ``unet`` and
reads output 0 as it always did.

Branches follow the ``DeepCache`` package's ``DeepCacheSDHelper`` (the one diffusers documents):
branch ``B`` is block ``B // 3`` and layer ``B % 3``; blocks count down blocks from the input
(up blocks from the output), layers count a down block's (ResNet, attention) pairs from its input
and an up block's from its output. On a cached call, with ``b, l = B // 3, B % 3``:

- run fresh: the time embedding, ``conv_in``, down blocks ``0 .. b-1`` whole, the first ``l``
  layers of down block ``b``; then, from the kept feature, the last ``l + 1`` layers of up block
  ``b`` counted from the output (with its upsampler), the up blocks below it and the output head;
- kept from the last full call: everything else (the rest of down block ``b``, the deeper down
  blocks, the middle block, the deeper up blocks). The kept feature is the input of up block
  ``b``'s layer ``l`` (counted from the output) before its skip connection is concatenated.

So branch 0 is the shallowest: ``conv_in`` plus the last (ResNet, attention) pair of the last up
block and ``conv_out``; the whole first down block is kept too (the helper caches it: its layers'
index is ≥ 0). A UNet with ``n`` down blocks has branches ``0 .. 3n - 1`` (SD2: 0–11).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from zoomq.model.manifest import shallow_part_name
from zoomq.model_prep.export import ExportUNet, Part, convert_part

#: Layers per block in DeepCache's branch numbering (``cache_branch_id % 3``, ``// 3``).
LAYERS = 3
#: The branches ``zoomq prepare`` gives a model unless told otherwise: DeepCache's own default.
DEFAULT_BRANCHES = (0,)


def split(branch: int) -> tuple[int, int]:
    """(block, layer) of DeepCache's branch id, as the helper's ``set_params`` computes them."""
    return branch // LAYERS, branch % LAYERS


def branch_count(unet_config: dict) -> int:
    """How many branches a UNet with this config has: three per down block."""
    return LAYERS * len(unet_config["down_block_types"])


def check_branches(branches, unet_config: dict) -> tuple[int, ...]:
    """The branches as a sorted tuple; ``ValueError`` naming the valid range for any other."""
    count = branch_count(unet_config)
    out = tuple(sorted(set(int(b) for b in branches)))
    bad = [b for b in out if not 0 <= b < count]
    if bad:
        raise ValueError(f"DeepCache branch {bad[0]}: this UNet has branches 0 to {count - 1}")
    return out


def _feature_source(unet, branch: int) -> tuple[torch.nn.Module, bool]:
    """The module whose output is ``branch``'s kept feature, and whether that output is a tuple."""
    block, layer = split(branch)
    n = len(unet.up_blocks)
    up = unet.up_blocks[n - 1 - block]
    first = len(up.resnets) - 1 - layer  # index (from the input) of the first fresh layer
    if first > 0:
        attentions = getattr(up, "attentions", None)
        return (attentions[first - 1], True) if attentions else (up.resnets[first - 1], False)
    return (unet.up_blocks[n - 2 - block], False) if n - 1 - block > 0 else (unet.mid_block, False)


class FeatureHooks:
    """Forward hooks on a diffusers UNet that keep each branch's feature of the last forward."""

    def __init__(self, unet, branches):
        self.branches = tuple(branches)
        self.features: dict[int, torch.Tensor] = {}
        self._handles = []
        for branch in branches:
            module, is_tuple = _feature_source(unet, branch)

            def keep(_module, _args, output, branch=branch, is_tuple=is_tuple):
                self.features[branch] = output[0] if is_tuple else output

            self._handles.append(module.register_forward_hook(keep))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class ShallowUNet(torch.nn.Module):
    """The fresh part of a cached call for one branch: ``(sample, timestep, encoder_hidden_states,
    feature) -> noise prediction``, the layers and order of diffusers' ``UNet2DConditionModel``."""

    def __init__(self, unet, branch: int):
        super().__init__()
        self.unet = unet
        self.block, self.layer = split(branch)

    @staticmethod
    def _attend(attn, hidden, encoder_hidden_states):
        return attn(hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    def forward(self, sample, timestep, encoder_hidden_states, feature):
        unet, b, layer = self.unet, self.block, self.layer
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        hidden = unet.conv_in(sample)
        res: tuple[torch.Tensor, ...] = (hidden,)
        for down in unet.down_blocks[:b]:
            if getattr(down, "has_cross_attention", False):
                hidden, states = down(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden, states = down(hidden_states=hidden, temb=emb)
            res += states
        down = unet.down_blocks[b]
        for j in range(layer):
            hidden = down.resnets[j](hidden, emb)
            if getattr(down, "attentions", None):
                hidden = self._attend(down.attentions[j], hidden, encoder_hidden_states)
            res += (hidden,)

        n = len(unet.up_blocks)
        up = unet.up_blocks[n - 1 - b]
        hidden = feature
        for j in range(len(up.resnets) - 1 - layer, len(up.resnets)):
            hidden = torch.cat([hidden, res[-1]], dim=1)
            res = res[:-1]
            hidden = up.resnets[j](hidden, emb)
            if getattr(up, "attentions", None):
                hidden = self._attend(up.attentions[j], hidden, encoder_hidden_states)
        if up.upsamplers is not None:  # never on the last up block: ``res`` then still holds samples
            for upsampler in up.upsamplers:
                hidden = upsampler(hidden, res[-1].shape[2:])
        for i in range(n - b, n):
            up = unet.up_blocks[i]
            states, res = res[-len(up.resnets):], res[: -len(up.resnets)]
            size = res[-1].shape[2:] if i < n - 1 else None
            if getattr(up, "has_cross_attention", False):
                hidden = up(hidden_states=hidden, temb=emb, res_hidden_states_tuple=states,
                            encoder_hidden_states=encoder_hidden_states, upsample_size=size)
            else:
                hidden = up(hidden_states=hidden, temb=emb, res_hidden_states_tuple=states, upsample_size=size)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


_T = TypeVar("_T")


def _returning(value: _T) -> Callable[..., _T]:
    """A function of any arguments that returns ``value``, bound now (a lambda in a loop would see the
    loop's last value)."""

    def constant(*_args: Any) -> _T:
        return value

    return constant


def convert_shallow_parts(folder: Path, dest: Path, branches, in_channels: int, text_hidden: int, *,
                          route: str = "direct", weights: str = "fp16") -> list[str]:
    """Write ``dest/unet_shallow_B.xml`` for each branch from the diffusers folder ``folder``;
    returns the part names. The example feature comes from one run of the full UNet."""
    from diffusers import UNet2DConditionModel

    wrapper = ExportUNet(
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    ).eval()
    unet = wrapper.model
    # an odd latent size, as for the full UNet: the trace keeps the explicit upsample sizes
    examples = (torch.zeros(2, in_channels, 9, 9), torch.tensor(999.0), torch.zeros(2, 77, text_hidden))
    hooks = FeatureHooks(unet, branches)
    with torch.no_grad():
        unet(*examples, return_dict=False)
    hooks.remove()
    names = []
    for branch in branches:
        feature = hooks.features[branch].detach().clone()
        shallow = ShallowUNet(unet, branch).eval()
        part = Part(
            shallow_part_name(branch),
            _returning(shallow),
            (
                ("sample", [-1, in_channels, -1, -1], lambda: examples[0]),
                ("timestep", [], lambda: examples[1]),
                ("encoder_hidden_states", [-1, 77, text_hidden], lambda: examples[2]),
                ("feature", [-1, feature.shape[1], -1, -1], _returning(feature)),
            ),
        )
        convert_part(folder, part, dest, route=route, weights=weights)
        names.append(part.name)
    return names
