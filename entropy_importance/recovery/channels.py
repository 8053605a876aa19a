"""Which channels of the unpruned model every conv / linear layer of a pruned model kept.

The pruning history (Torch-Pruning's ``[layer, out_channels, indices]`` entries) is replayed on a copy of the
unpruned model whose weights are tags: ``W[o, i, ...] = o * 2**24 + i``. Torch-Pruning removes channels by
selecting rows and columns of the weights, so after the replay every weight entry still names the output and input
channel it came from. Nothing is guessed from weight values, and every coupled layer the dependency graph touched
(residual streams, depthwise convs, attention projections) gets its indices from the same replay that built the
pruned model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..serialization import replay_history, state_signature

__all__ = ["KeptChannels", "kept_channels", "tagged_layers"]

_SHIFT = 2**24  # output tag * _SHIFT + input tag: exact in float64 for widths below 2**24


@dataclass(frozen=True)
class KeptChannels:
    """For each output channel of a pruned layer, the unpruned layer's channel it is (``out``), and for each input
    column (per group) the unpruned column (``inputs``)."""

    out: Tensor
    inputs: Tensor

    def pruned(self, out_width: int, in_width: int) -> bool:
        """Whether anything was removed from an unpruned layer of these widths."""
        return self.out.numel() != out_width or self.inputs.numel() != in_width


def tagged_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose channels are tracked: convolutions (not transposed) and linear layers."""
    return {n: m for n, m in model.named_modules()
            if (isinstance(m, nn.modules.conv._ConvNd) and not m.transposed) or isinstance(m, nn.Linear)}


def _as_float64(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, Mapping):
        return {k: _as_float64(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_as_float64(v) for v in x)
    return x


def kept_channels(original: nn.Module, history: list[list], inputs: Any, pruned: nn.Module) -> dict[str, KeptChannels]:
    """``{layer name: KeptChannels}`` for every conv / linear layer, from ``history`` replayed on a tagged copy of
    ``original`` (built on ``inputs``: one example is enough); ``original`` is not modified.

    Raises:
        ValueError: the history does not replay on ``original``, or the replay does not give ``pruned``'s shapes
            (``pruned`` is not ``original`` pruned by this history).
    """
    tagged = copy.deepcopy(original).cpu().double().eval()
    with torch.no_grad():
        for m in tagged_layers(tagged).values():
            out, cols = m.weight.shape[:2]
            tag = torch.arange(out, dtype=torch.float64)[:, None] * _SHIFT + torch.arange(cols, dtype=torch.float64)
            m.weight.copy_(tag.reshape(out, cols, *([1] * (m.weight.dim() - 2))).expand_as(m.weight))
    replay_history(tagged, history, _as_float64(inputs))
    expected = state_signature(pruned)
    found = state_signature(tagged)
    if found != expected:
        diff = next(((a, b) for a, b in zip(found, expected, strict=False) if a != b), None)
        detail = f"{diff[0]} after the replay, {diff[1]} in the pruned model" if diff else \
            f"{len(found)} state entries after the replay, {len(expected)} in the pruned model"
        raise ValueError(f"the pruned model is not the original pruned by this history ({detail}); pass the "
                         "unpruned model it came from")
    kept = {}
    for name, m in tagged_layers(tagged).items():
        w = m.weight.detach().flatten(2)[:, :, 0] if m.weight.dim() > 2 else m.weight.detach()
        tags = w.to(torch.int64)
        kept[name] = KeptChannels(out=tags[:, 0] // _SHIFT, inputs=tags[0] % _SHIFT)
    return kept
