"""The one place that decides how a dependency of a Torch-Pruning group sees a layer's channels.

A group is a list of ``(dependency, idxs)``; each dependency names a layer and the pruning function that
removes channels from it. :func:`channel_view` maps such a dependency to a :class:`ChannelView`: the layer's
weight arranged as ``(channels, units, taps)``, where row ``c`` holds everything that channel ``c`` owns in
that layer, split into ``units`` sub-vectors of ``taps`` values:

=========================  ======================================  ===========================
dependency                 row ``c``                               shape
=========================  ======================================  ===========================
conv out-channels          filter ``W[c]``                         ``(O, I/g, kh*kw)``
conv in-channels           kernels reading input ``c``             ``(I, O/g, kh*kw)``
depthwise conv (both)      the channel's single kernel             ``(C, 1, kh*kw)``
transposed conv            same meaning, axes swapped              as above
linear out / in            row ``W[c]`` / column ``W[:, c]``       ``(O, I, 1)`` / ``(I, O, 1)``
=========================  ======================================  ===========================

The decision is made once, from the pruning function's owner (a ``BasePruningFunc`` instance), through
the table :data:`VIEW_BUILDERS` looked up along the owner's MRO, so subclasses of Torch-Pruning's pruners
are recognised too. Depthwise convs get their own entry (Torch-Pruning's built-in importances skip them).
BatchNorm, LayerNorm and the other normalisation/parameter pruners carry no filter weights and contribute
nothing. A customised pruner of unknown type falls back on the module's type (conv or linear).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor
from torch_pruning.pruner import function as tpf

__all__ = ["ChannelView", "channel_view", "VIEW_BUILDERS"]


@dataclass(frozen=True)
class ChannelView:
    """A layer seen from one dependency.

    Attributes:
        module: the layer.
        kind: ``"conv_out"``, ``"conv_in"``, ``"depthwise"``, ``"linear_out"`` or ``"linear_in"``.
        slices: float32 ``(channels, units, taps)`` weight view (see the module docstring).
    """

    module: nn.Module
    kind: str
    slices: Tensor

    @property
    def num_channels(self) -> int:
        return self.slices.shape[0]


def _conv_weight(layer: nn.Module) -> Tensor:
    return layer.weight.detach().float().flatten(2)  # (A, B, taps)


def _regroup(w: Tensor, groups: int) -> Tensor:
    """(groups*A', B', taps) laid out per group -> (groups*B', A', taps): swap the two channel axes per group."""
    a, b, taps = w.shape
    return w.view(groups, a // groups, b, taps).permute(0, 2, 1, 3).reshape(groups * b, a // groups, taps)


def _conv_out(layer: nn.Module) -> tuple[str, Tensor]:
    w = _conv_weight(layer)
    return "conv_out", (_regroup(w, layer.groups) if layer.transposed else w)


def _conv_in(layer: nn.Module) -> tuple[str, Tensor]:
    w = _conv_weight(layer)
    return "conv_in", (w if layer.transposed else _regroup(w, layer.groups))


def _depthwise(layer: nn.Module) -> tuple[str, Tensor]:
    return "depthwise", _conv_weight(layer)


def _linear_out(layer: nn.Module) -> tuple[str, Tensor]:
    return "linear_out", layer.weight.detach().float().unsqueeze(-1)


def _linear_in(layer: nn.Module) -> tuple[str, Tensor]:
    return "linear_in", layer.weight.detach().float().t().unsqueeze(-1)


Builder = Callable[[nn.Module], "tuple[str, Tensor]"]

#: (pruner class, direction) -> builder. Direction is "out" or "in".
VIEW_BUILDERS: dict[tuple[type, str], Builder] = {
    (tpf.DepthwiseConvPruner, "out"): _depthwise,
    (tpf.DepthwiseConvPruner, "in"): _depthwise,
    (tpf.ConvPruner, "out"): _conv_out,
    (tpf.ConvPruner, "in"): _conv_in,
    (tpf.LinearPruner, "out"): _linear_out,
    (tpf.LinearPruner, "in"): _linear_in,
}

#: pruners whose layers carry no filter weights: their dependencies contribute nothing.
_NO_WEIGHTS = (
    tpf.BatchnormPruner,
    tpf.LayernormPruner,
    tpf.GroupNormPruner,
    tpf.InstanceNormPruner,
    tpf.PReLUPruner,
    tpf.EmbeddingPruner,
    tpf.ParameterPruner,
    tpf.MultiheadAttentionPruner,
    tpf.LSTMPruner,
)


def _direction(handler: Callable) -> str:
    name = getattr(handler, "__name__", "")
    # DepthwiseConvPruner aliases prune_in_channels = prune_out_channels; both directions are the same view.
    return "in" if "in_channels" in name else "out"


def _fallback_builder(layer: nn.Module, direction: str) -> Builder | None:
    if isinstance(layer, nn.modules.conv._ConvNd):
        if layer.groups == layer.out_channels > 1:  # Torch-Pruning's own depthwise rule
            return _depthwise
        return _conv_out if direction == "out" else _conv_in
    if isinstance(layer, nn.Linear):
        return _linear_out if direction == "out" else _linear_in
    return None


def channel_view(dep) -> ChannelView | None:
    """Classify one dependency of a group; ``None`` when the layer has no filter weights to score."""
    handler = dep.handler
    layer = dep.target.module
    owner = getattr(handler, "__self__", None)
    direction = _direction(handler)
    if owner is None or isinstance(owner, _NO_WEIGHTS) or not isinstance(layer, nn.Module):
        return None
    builder = None
    for cls in type(owner).__mro__:
        builder = VIEW_BUILDERS.get((cls, direction))
        if builder is not None:
            break
    if builder is None:
        builder = _fallback_builder(layer, direction)
    if builder is None or getattr(layer, "weight", None) is None:
        return None
    kind, slices = builder(layer)
    return ChannelView(layer, kind, slices.contiguous())


@torch.no_grad()
def channel_norms(view: ChannelView) -> Tensor:
    """L2 norm of each channel's weights, ``(channels,)`` (the tie-breaking key of pitfall 5)."""
    return torch.linalg.vector_norm(view.slices, dim=(1, 2))
