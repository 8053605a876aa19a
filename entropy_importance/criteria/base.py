"""Base class shared by every criterion: per-layer channel scores -> one score per channel of a group."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from .channels import ChannelView, channel_norms, channel_view

__all__ = ["ChannelScoreImportance"]

_DEFAULT_TARGETS = (nn.modules.conv._ConvNd, nn.Linear)


class ChannelScoreImportance(tp.importance.GroupMagnitudeImportance):
    """Turns a per-layer channel score into a Torch-Pruning group importance.

    For every dependency of a group, :func:`~entropy_importance.channels.channel_view` (the single place
    that dispatches on the pruning function) says which weights belong to each channel of that layer;
    :meth:`layer_scores` scores all channels of the layer (higher = keep); the scores of the channels in
    the group are mapped to root coordinates through ``group[i].root_idxs`` and merged with Torch-Pruning's
    own ``_reduce`` (``group_reduction``) and ``_normalize`` (``normalizer``).

    Subclasses implement :meth:`layer_scores`. A group without any scorable layer returns ``None``, which
    Torch-Pruning's pruners skip.

    Args:
        group_reduction: how the layers of a group are merged (``"mean"``, ``"sum"``, ``"max"``, ``"prod"``,
            ``"first"`` = only the root layer, ``"gate"``), as in Torch-Pruning.
        normalizer: per-group normalisation (``"mean"``, ``"max"``, ``"sum"``, ``"standarization"``,
            ``"gaussian"``, ``"lamp"``, ``None`` or a callable), as in Torch-Pruning. It matters for global
            pruning, where scores of different layers are compared.
        target_types: module types that may contribute (default: conv and linear layers).
        tie_break: break exact ties (frequent with histogram entropies) by the channel's weight L2 norm,
            without changing the order of channels whose scores differ (docs/criteria.md, ties). The shift is added
            to each layer's scores before the reduction (see :meth:`_break_ties`), so Torch-Pruning's contract
            holds: the score for any ``group_reduction`` is that reduction of the ``group_reduction=None`` stack.
    """

    def __init__(
        self,
        group_reduction: str | None = "mean",
        normalizer="mean",
        target_types: Sequence[type] = _DEFAULT_TARGETS,
        tie_break: bool = True,
    ) -> None:
        super().__init__(
            p=2, group_reduction=group_reduction, normalizer=normalizer, bias=False,
            target_types=list(target_types),
        )
        self.tie_break = tie_break

    # ------------------------------------------------------------------ subclass API
    def layer_scores(self, view: ChannelView) -> Tensor | None:
        """Scores of all channels of ``view.module`` as seen by this dependency, ``(view.num_channels,)``."""
        raise NotImplementedError

    def channel_scores(self, view: ChannelView, index: Tensor) -> Tensor | None:
        """Scores of the channels ``index`` of ``view.module``, ``(len(index),)``: :meth:`layer_scores` of the whole
        layer, indexed. Criteria for which scoring a few channels costs much less than scoring the layer override
        this (a DenseNet layer is visited by every group of its block, each wanting a few of its channels)."""
        local = self.layer_scores(view)
        if local is None:
            return None
        if local.shape != (view.num_channels,):
            raise RuntimeError(
                f"{type(self).__name__}.layer_scores returned shape {tuple(local.shape)} for a layer with "
                f"{view.num_channels} channels"
            )
        return local[index.to(local.device)]

    # ------------------------------------------------------------------ Importance contract
    @torch.no_grad()
    def __call__(self, group, **kwargs) -> Tensor | None:
        n_root = len(group[0].idxs)
        scores: list[Tensor] = []
        norms: list[Tensor] = []
        roots: list[list[int]] = []
        for item in group:
            dep, idxs = item.dep, item.idxs
            if not isinstance(dep.target.module, tuple(self.target_types)):
                continue
            view = channel_view(dep)
            if view is None:
                continue
            index = torch.as_tensor(list(idxs), dtype=torch.long, device=view.slices.device)
            if index.numel() and (index.min() < 0 or index.max() >= view.num_channels):
                # Torch-Pruning mapped this dependency to channels the layer does not have (seen with some
                # split/concat patterns): the group cannot be scored consistently, so it is not pruned
                warnings.warn(
                    f"{type(self).__name__}: group skipped, {dep.target.name} has {view.num_channels} channels but "
                    f"the group addresses channel {int(index.max())}", stacklevel=2,
                )
                return None
            local = self.channel_scores(view, index)
            if local is None:
                continue
            if not torch.isfinite(local).all():
                raise ValueError(
                    f"{type(self).__name__}: non-finite scores for layer {dep.target.name}; check the layer's "
                    "weights (and calibration statistics) for NaN/Inf"
                )
            scores.append(local.float())
            norms.append(channel_norms(view)[index])
            roots.append(item.root_idxs)
        if not scores:
            return None
        order = sorted(range(len(scores)), key=lambda i: scores[i].numel() != n_root)
        if scores[order[0]].numel() != n_root:
            warnings.warn(
                f"{type(self).__name__}: no scorable layer spans the whole group; group skipped", stacklevel=2
            )
            return None
        scores = [scores[i] for i in order]
        norms = [norms[i] for i in order]
        roots = [roots[i] for i in order]
        if self.tie_break:
            scores = self._break_ties(scores, norms, roots)
        imp = self._reduce(scores, roots)
        imp = self._normalize(imp, self.normalizer)
        return torch.nan_to_num(imp, nan=0.0)  # 0/0 of an all-zero group under "mean"/"max" normalisers

    def _reduce_as(self, reduction: str, scores: list[Tensor], roots: list[list[int]]) -> Tensor:
        """Torch-Pruning's ``_reduce`` with another ``group_reduction`` (the same arithmetic, bit for bit)."""
        other = copy.copy(self)
        other.group_reduction = reduction
        return other._reduce(scores, roots)

    def _break_ties(self, scores: list[Tensor], norms: list[Tensor], roots: list[list[int]]) -> list[Tensor]:
        """Break exact ties by weight norm in every layer's scores, *before* the reduction.

        Each layer gets ``eps * key``, ``key`` its channels' weight L2 norms min-max scaled to [0, 1] (0 when they
        are all equal). ``eps`` is the same for every layer and for every reduction, so the ``group_reduction=None``
        stack is the tie-broken per-layer scores and any reduction of it equals that reduction's score exactly
        (Torch-Pruning's reduction contract). ``eps`` starts below half the smallest gap between distinct scores of
        every layer and (divided by the number of layers) of every reduced score, and is halved until every
        reduction of :data:`TIE_BREAK_REDUCTIONS` keeps the strict order of its unperturbed result: channels whose
        scores differ never swap, in any layer or under any reduction; tied channels are ordered by weight norm
        where float32 resolution allows it. When no ``eps`` qualifies the scores are returned unchanged.
        """
        keys = [_unit_scale(n.to(s.device, torch.float32)) for s, n in zip(scores, norms, strict=True)]
        if not any(bool(k.any()) for k in keys):
            return scores
        before = {r: self._reduce_as(r, scores, roots) for r in TIE_BREAK_REDUCTIONS}
        # a reduction that already overflows (a product of large scores) carries no order to preserve
        before = {r: v for r, v in before.items() if bool(torch.isfinite(v).all())}
        gaps = [g for s in scores if (g := _smallest_gap(s)) is not None]
        gaps += [g / len(scores) for v in before.values() if (g := _smallest_gap(v)) is not None]
        if gaps:
            eps = 0.49 * min(gaps)
        else:  # every layer and every reduction ties all channels: there is no strict order to keep
            eps = 0.49 * max([1.0] + [float(s.abs().max()) for s in scores if s.numel()])
        for _ in range(_MAX_HALVINGS):
            broken = [s + eps * k for s, k in zip(scores, keys, strict=True)]
            if all(_keeps_order(v, self._reduce_as(r, broken, roots)) for r, v in before.items()):
                return broken
            eps /= 2
        return scores


#: reductions whose strict order the tie-break must preserve (all of Torch-Pruning 1.6's 1-D reductions).
TIE_BREAK_REDUCTIONS = ("mean", "sum", "max", "prod", "first", "gate")
_MAX_HALVINGS = 24


def _unit_scale(x: Tensor) -> Tensor:
    """``x`` min-max scaled to [0, 1]; zeros when it is constant (or empty)."""
    if x.numel() == 0:
        return x
    span = x.max() - x.min()
    if not span > 0:
        return torch.zeros_like(x)
    return (x - x.min()) / span


def _smallest_gap(x: Tensor) -> float | None:
    """Smallest positive difference between distinct finite values of ``x``; ``None`` with fewer than two."""
    distinct = torch.unique(x[torch.isfinite(x)])
    if distinct.numel() < 2:
        return None
    return float((distinct[1:] - distinct[:-1]).min())


def _keeps_order(before: Tensor, after: Tensor) -> bool:
    """Whether ``before[a] < before[b]`` implies ``after[a] < after[b]`` for every pair of positions."""
    if before.dim() != 1 or before.numel() < 2:
        return True
    order = torch.argsort(before, stable=True)
    b, a = before[order], after[order]
    if not torch.isfinite(a).all():
        return False
    level = torch.cat([b.new_zeros(1, dtype=torch.long), (b[1:] != b[:-1]).long()]).cumsum(0)
    n = int(level[-1]) + 1
    if n < 2:
        return True
    low = a.new_full((n,), float("inf")).scatter_reduce(0, level, a, "amin")
    high = a.new_full((n,), float("-inf")).scatter_reduce(0, level, a, "amax")
    return bool((high[:-1] < low[1:]).all())

