"""Base class shared by every criterion: per-layer channel scores -> one score per channel of a group."""

from __future__ import annotations

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
            without changing the order of channels whose scores differ (methods.md pitfall 5).
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
        imp = self._reduce(scores, roots)
        if self.tie_break and imp.dim() == 1:
            imp = _break_ties(imp, self._reduce(norms, roots))
        imp = self._normalize(imp, self.normalizer)
        return torch.nan_to_num(imp, nan=0.0)  # 0/0 of an all-zero group under "mean"/"max" normalisers


def _break_ties(score: Tensor, key: Tensor) -> Tensor:
    """Add ``key`` (min-max scaled to [0, 1]) times less than half the smallest gap between distinct scores."""
    distinct = torch.unique(score)
    gap = (distinct[1:] - distinct[:-1]).min() if distinct.numel() > 1 else score.abs().max().clamp_min(1.0)
    span = key.max() - key.min()
    if span <= 0:
        return score
    return score + 0.49 * gap * (key - key.min()) / span
