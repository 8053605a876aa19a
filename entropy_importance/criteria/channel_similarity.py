"""FEC: filter entropy from the similarity of a filter's channels (data-free)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .base import ChannelScoreImportance
from .channels import ChannelView
from .estimators import EDGE_MODES, EdgeMode, histogram_entropy

__all__ = ["ChannelSimilarityEntropyImportance"]

Construction = Literal["histogram", "kernel"]


class ChannelSimilarityEntropyImportance(ChannelScoreImportance):
    """Channel-similarity entropy (FEC), Geng & Niu, *Computer Engineering* 50(7), 2024.

    Each filter ``W_i`` (``C x k x k``) is mean-compressed over its kernel, ``m_ic = mean_uv W[i, c, u, v]``,
    so that the filter becomes ``C`` scalars, one per channel. Channels with close values are similar;
    the entropy of how the channels spread over groups of similar values is the filter's score,
    and the lowest-entropy filters (all channels alike, hence redundant) are pruned first.
    Two constructions of "similarity -> probability -> entropy" (methods.md section 3, [I]):

    * ``"histogram"`` (default): similar channels share a symbol. The compressed values are put in
      ``b`` equal-width bins whose edges are shared by the whole layer (``edges="layer"``), ``b = ceil(sqrt(C))``
      unless ``bins`` is given, and ``H_i = -sum_b p_ib log p_ib`` with ``p_ib`` the fraction of the filter's
      channels in bin ``b``. Range ``[0, log b]``.
    * ``"kernel"``: the same entropy with a Gaussian kernel instead of bins. With ``d_i(a, b) = |m_ia - m_ib|``
      and a bandwidth ``tau`` shared by the layer (Silverman's rule on the layer's compressed values unless
      ``bandwidth`` is given), ``f_i(a) = mean_b exp(-d_i(a, b)^2 / (2 tau^2))`` is how similar channel ``a`` is
      to the filter's channels, and ``H_i = -mean_a log f_i(a)``. Range ``[0, log C]``.

    Both give ``H = 0`` to a filter whose channels are all equal. The spec's other reading,
    ``p_a = S(a) / sum S`` with ``S(a) = sum_b exp(-d(a, b) / tau)``, is *not* offered: it gives a filter with
    identical channels the maximal entropy ``log C``, the opposite of "alike channels = low entropy".

    Default: ``"kernel"``, chosen by the real-data ablation (ResNet-56 on Fashion-MNIST, validation split, 2x MAC
    speed-up, BatchNorm re-estimated): +4.9 points over ``"histogram"`` (threshold 3.1); per-channel edges
    instead of layer-shared ones lost 28.5 points. See docs/benchmarks.md.
    Where a filter has a single channel (depthwise convs, layers with one input) its ``k x k`` taps play the
    role of the channels. In-channel dependencies (the next layer's kernels reading channel ``c``) are
    scored the same way on ``W[:, c]``.

    Example:
        >>> import torch_pruning as tp, torchvision
        >>> model = torchvision.models.resnet18()
        >>> pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 224, 224),
        ...     importance=ChannelSimilarityEntropyImportance(), pruning_ratio=0.5, ignored_layers=[model.fc])
        >>> pruner.step()
    """

    def __init__(
        self,
        construction: Construction = "kernel",
        bins: int | None = None,
        edges: EdgeMode = "layer",
        bandwidth: float | None = None,
        group_reduction: str | None = "mean",
        normalizer="mean",
        tie_break: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(group_reduction=group_reduction, normalizer=normalizer, tie_break=tie_break, **kwargs)
        if construction not in ("histogram", "kernel"):
            raise ValueError(f"construction must be 'histogram' or 'kernel', got {construction!r}")
        if bins is not None and (not isinstance(bins, int) or bins < 2):
            raise ValueError(f"bins must be an integer >= 2 or None (automatic), got {bins!r}")
        if edges not in EDGE_MODES:
            raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 or None (Silverman's rule), got {bandwidth!r}")
        self.construction = construction
        self.bins = bins
        self.edges = edges
        self.bandwidth = bandwidth

    @staticmethod
    def compress(view: ChannelView) -> Tensor:
        """Mean compression: ``(filters, channels)``; single-channel filters keep their taps instead."""
        slices = view.slices
        return slices[:, 0, :] if slices.shape[1] == 1 else slices.mean(2)

    def layer_scores(self, view: ChannelView) -> Tensor:
        x = self.compress(view)
        if x.shape[1] < 2:  # one value per filter: no similarity structure to measure
            return torch.zeros(x.shape[0], device=x.device)
        if self.construction == "histogram":
            bins = self.bins or max(2, math.ceil(math.sqrt(x.shape[1])))
            return histogram_entropy(x, bins, edges=self.edges)
        return _kernel_entropy(x, self.bandwidth)

    def channel_scores(self, view: ChannelView, index: Tensor) -> Tensor | None:
        """The kernel entropy of only the rows in ``index`` (its cost is per row), with the bandwidth of the whole
        layer, so that the result equals ``layer_scores(view)[index]``."""
        if self.construction != "kernel":
            return super().channel_scores(view, index)
        x = self.compress(view)
        if x.shape[1] < 2:
            return torch.zeros(index.numel(), device=x.device)
        tau = self.bandwidth if self.bandwidth is not None else _silverman(x)
        return _kernel_entropy(x[index.to(x.device)], tau)


def _silverman(x: Tensor) -> float:
    n = x.shape[1]
    return 1.06 * float(x.std()) * n ** (-0.2)


def _kernel_entropy(x: Tensor, bandwidth: float | None, max_elements: int = 1 << 18,
                    max_points: int = 256) -> Tensor:
    """``-mean_a log mean_b exp(-(x_a - x_b)^2 / (2 tau^2))`` per row of ``x`` (rows, C), chunked over rows.

    The cost is ``rows * C^2``; rows with more than ``max_points`` values (a 4096-wide linear layer) are replaced by
    ``max_points`` evenly spaced order statistics, which keep the row's distribution (measured against the exact
    estimate in tests/test_criteria.py) at ``rows * max_points^2`` cost. ``tau`` comes from all values.
    Every exponent is <= 0 and the ``a == b`` term is exactly ``exp(0) = 1``, so the inner sum is >= 1 and its log
    needs no max-shift (no ``logsumexp``); the pairwise block is transformed in place, in chunks that stay in cache."""
    tau = bandwidth if bandwidth is not None else _silverman(x)
    rows, c = x.shape
    if tau <= 0:
        return torch.zeros(rows, device=x.device)
    if c > max_points:
        picks = torch.linspace(0, c - 1, max_points, device=x.device).round().long()
        x, c = x.sort(dim=1).values[:, picks], max_points
    x = x.float()
    out = torch.empty(rows, device=x.device)
    step = max(1, max_elements // (c * c))
    scale = -0.5 / (tau * tau)
    for start in range(0, rows, step):
        chunk = x[start:start + step]
        similarity = (chunk.unsqueeze(2) - chunk.unsqueeze(1)).square_().mul_(scale).exp_().sum(2)
        out[start:start + step] = math.log(c) - similarity.log_().mean(1)
    return out.clamp_min(0)
