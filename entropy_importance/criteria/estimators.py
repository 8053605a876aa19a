"""Batched histogram entropy estimators over a ``(channels, samples)`` layout.

Every function here works on all channels at once (no Python loop over channels), computes in float32
whatever the input dtype, and returns float32. Histogram counts are plain float32 tensors: counts of two
batches add up to the counts of their union, so they can be streamed over batches and summed across
``torch.distributed`` ranks before the entropy is taken.

Conventions (docs/criteria.md, "Conventions and pitfalls"):

* natural log; ``0 log 0 := 0`` through :func:`torch.special.xlogy` (never ``log(p + eps)``);
* equal-width bins on ``[lo, hi]``; the maximum lands in the last bin, values outside ``[lo, hi]`` are
  clamped into the end bins (this is what makes robust quantile edges robust);
* a constant channel (``hi == lo``) puts all its samples in one bin, so its entropy is exactly 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "EdgeMode",
    "EDGE_MODES",
    "bin_edges",
    "bin_index",
    "bin_scaled",
    "count_rows",
    "histogram_counts",
    "joint_class_counts",
    "entropy_from_counts",
    "histogram_entropy",
    "conditional_entropy",
    "mutual_information",
]

EdgeMode = Literal["channel", "layer", "quantile"]
EDGE_MODES: tuple[str, ...] = ("channel", "layer", "quantile")


def _as_2d_float(x: Tensor, name: str = "x") -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (channels, samples), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no samples (shape {tuple(x.shape)}): entropy needs at least one")
    x = x.detach().float()
    # a sum is one cheap pass and is non-finite whenever an element is; confirm exactly only then
    if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values; entropies of non-finite data are undefined")
    return x


def _check_bins(bins: int) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")


def bin_edges(x: Tensor, edges: EdgeMode = "channel", quantile: float = 0.005) -> tuple[Tensor, Tensor]:
    """Lower and upper histogram edges per channel, each of shape ``(channels,)``.

    Args:
        x: ``(channels, samples)`` values.
        edges: ``"channel"`` per-channel min/max (Luo & Wu's reading; scale-invariant), ``"layer"`` one min/max
            shared by all channels (keeps differences in spread), ``"quantile"`` per-channel
            ``quantile``/``1 - quantile`` quantiles (robust to outliers, which are clamped into the end bins).
        quantile: lower tail mass cut off by ``"quantile"`` edges, in ``[0, 0.5)``.
    """
    x = _as_2d_float(x)
    # amin/amax: several times faster than aminmax on CPU (measured, torch 2.15)
    if edges == "channel":
        return x.amin(1), x.amax(1)
    if edges == "layer":
        c = x.shape[0]
        return x.amin().expand(c).clone(), x.amax().expand(c).clone()
    if edges == "quantile":
        if not 0.0 <= quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
        n = x.shape[1]
        # lower-order-statistic quantiles via kthvalue (torch.quantile refuses large inputs)
        k_lo = int(quantile * (n - 1)) + 1
        k_hi = n - k_lo + 1
        return x.kthvalue(k_lo, dim=1).values, x.kthvalue(k_hi, dim=1).values
    raise ValueError(f"unknown edges {edges!r}; choose one of {EDGE_MODES}")


def bin_scaled(x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """``(x - lo) * bins / (hi - lo)`` clamped to ``[0, bins - 1]`` (float); its integer part is the bin."""
    lo = torch.as_tensor(lo, dtype=torch.float32, device=x.device).reshape(-1, 1)
    hi = torch.as_tensor(hi, dtype=torch.float32, device=x.device).reshape(-1, 1)
    span = hi - lo
    scale = torch.where(span > 0, bins / span.clamp_min(1e-30), torch.zeros_like(span))  # finite: no 0 * inf
    return torch.addcmul(-lo * scale, x, scale).clamp_(0, bins - 1)


def _bin_index_float(x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    return bin_scaled(x, lo, hi, bins).floor_()


def bin_index(x: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """Bin of every sample, ``(channels, samples)`` int64 in ``[0, bins)``.

    ``lo``/``hi`` are ``(channels,)`` (or scalars). Values at ``hi`` go to the last bin, values outside the
    edges to the nearest end bin, and a channel with ``hi <= lo`` puts everything in bin 0.
    """
    _check_bins(bins)
    return _bin_index_float(x.detach().float(), lo, hi, bins).long()


def count_rows(cell: Tensor, cells_per_row: int) -> Tensor:
    """Counts per row of the cells ``trunc(cell)``, ``cell`` (rows, samples) float in ``[0, cells_per_row)``."""
    rows = cell.shape[0]
    total = rows * cells_per_row
    # int conversion truncates, which is floor for these non-negative values; int32 + bincount is the fastest
    # exact counter measured on CPU (about 2x torch.histc)
    dtype = torch.int32 if total < 2**31 else torch.int64
    offset = torch.arange(rows, device=cell.device, dtype=dtype).mul_(cells_per_row).unsqueeze(1)
    flat = cell.to(dtype).add_(offset).reshape(-1)
    return torch.bincount(flat, minlength=total).view(rows, cells_per_row).float()


def histogram_counts(
    x: Tensor,
    bins: int,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    edges: EdgeMode = "channel",
    quantile: float = 0.005,
) -> Tensor:
    """Per-channel histogram counts, ``(channels, bins)`` float32.

    Edges are ``lo``/``hi`` when given (fixed edges, as needed for streaming), else computed with
    :func:`bin_edges`. Counts are additive: ``histogram_counts`` of a concatenation equals the sum of the
    counts of its parts under the same edges.
    """
    x = _as_2d_float(x)
    _check_bins(bins)
    if lo is None or hi is None:
        lo_, hi_ = bin_edges(x, edges, quantile)
        lo = lo_ if lo is None else lo
        hi = hi_ if hi is None else hi
    return count_rows(bin_scaled(x, lo, hi, bins), bins)


def joint_class_counts(
    x: Tensor, labels: Tensor, num_classes: int, bins: int, lo: Tensor, hi: Tensor
) -> Tensor:
    """Joint (bin, class) counts per channel, ``(channels, bins, num_classes)`` float32.

    ``x`` is ``(channels, samples)``, ``labels`` ``(samples,)`` integer class ids in ``[0, num_classes)``.
    """
    x = _as_2d_float(x)
    labels = labels.reshape(-1).to(x.device)
    if labels.numel() != x.shape[1]:
        raise ValueError(f"got {labels.numel()} labels for {x.shape[1]} samples")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    cell = _bin_index_float(x, lo, hi, bins).mul_(num_classes).add_(labels.float().unsqueeze(0))  # exact ints
    return count_rows(cell, bins * num_classes).view(x.shape[0], bins, num_classes)


def entropy_from_counts(counts: Tensor, miller_madow: bool = False) -> Tensor:
    """Plug-in entropy (nats) of histograms along the last dimension.

    ``H = -sum_b p_b log p_b`` with ``p_b = counts_b / n``. With ``miller_madow=True`` the bias correction
    ``(m_nonzero - 1) / (2 n)`` is added (Miller 1955), ``m_nonzero`` being the number of occupied bins.
    An all-zero histogram has entropy 0.
    """
    counts = counts.float()
    if (counts < 0).any():
        raise ValueError("histogram counts must be non-negative")
    n = counts.sum(-1, keepdim=True)
    p = counts / n.clamp_min(1e-30)
    h = -torch.special.xlogy(p, p).sum(-1)
    if miller_madow:
        occupied = (counts > 0).sum(-1).float()
        h = h + (occupied - 1).clamp_min(0) / (2 * n.squeeze(-1).clamp_min(1e-30))
    return h


def histogram_entropy(
    x: Tensor,
    bins: int,
    edges: EdgeMode = "channel",
    quantile: float = 0.005,
    miller_madow: bool = False,
) -> Tensor:
    """Entropy (nats) of each channel's ``bins``-bin histogram, ``(channels,)`` float32.

    Example:
        >>> histogram_entropy(torch.tensor([[0., 1., 2., 3.], [5., 5., 5., 5.]]), bins=4)
        tensor([1.3863, 0.0000])
    """
    return entropy_from_counts(histogram_counts(x, bins, edges=edges, quantile=quantile), miller_madow)


def conditional_entropy(joint: Tensor) -> Tensor:
    """``H(Y | Z)`` in nats from joint counts ``(channels, bins, classes)``: ``sum_b p(b) H(Y | Z = b)``.

    Computed as ``H(Z, Y) - H(Z)``, which is the same quantity without a loop over bins.
    """
    if joint.dim() != 3:
        raise ValueError(f"joint counts must have shape (channels, bins, classes), got {tuple(joint.shape)}")
    joint = joint.float()
    h_zy = entropy_from_counts(joint.flatten(1))
    h_z = entropy_from_counts(joint.sum(2))
    return (h_zy - h_z).clamp_min(0)


def mutual_information(joint: Tensor) -> Tensor:
    """``I(Y; Z) = H(Y) - H(Y | Z)`` in nats from joint counts ``(channels, bins, classes)``."""
    h_y = entropy_from_counts(joint.float().sum(1))
    return (h_y - conditional_entropy(joint)).clamp_min(0)
