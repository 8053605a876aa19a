"""Per-layer activation statistics, streamed over batches and mergeable across ``torch.distributed`` ranks.

Each statistic receives the activation of one layer as ``(batch, channels, positions)`` float32 and keeps
only a bounded summary:

* :class:`ResponseSamples`: each image's global-average-pooled response per channel (and its label), at most
  ``max_samples`` images (a seeded reservoir beyond that). Merged across ranks by gathering.
* :class:`MapEntropySum`: the running sum over images of each feature map's spatial histogram entropy,
  and the image count. Merged across ranks by summing.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["LayerStatistic", "ResponseSamples", "MapEntropySum", "distributed_world"]


def distributed_world() -> int:
    """Number of ranks in the default process group, 1 when none is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LayerStatistic:
    """Interface: ``update(activation, targets)``, ``all_reduce()``, ``channels``, ``num_images``."""

    channels: int

    def update(self, activation: Tensor, targets: Tensor | None) -> None:
        raise NotImplementedError

    def all_reduce(self) -> None:
        raise NotImplementedError

    @property
    def num_images(self) -> int:
        raise NotImplementedError


class ResponseSamples(LayerStatistic):
    """Global-average-pooled responses ``(images, channels)`` and optional labels, bounded by ``max_samples``.

    Up to ``max_samples`` images every response is kept, so batching does not change the statistics;
    beyond that a reservoir (uniform over all images seen, seeded) keeps ``max_samples`` of them.
    Memory: ``max_samples * channels * 4`` bytes per layer.
    """

    def __init__(self, channels: int, max_samples: int, keep_labels: bool, seed: int = 0) -> None:
        self.channels = channels
        self.max_samples = max_samples
        self.keep_labels = keep_labels
        self.values: Tensor | None = None  # (stored, C) once consolidated
        self.labels: Tensor | None = None
        self._chunks: list[tuple[Tensor, Tensor | None]] = []  # batches not yet consolidated
        self.stored = 0
        self.seen = 0
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def num_images(self) -> int:
        return self.seen

    def _consolidate(self) -> None:
        """Concatenate pending batches (memory grows with the images seen, never beyond ``max_samples``)."""
        if not self._chunks:
            return
        parts = ([] if self.values is None else [self.values]) + [v for v, _ in self._chunks]
        self.values = torch.cat(parts)
        if self.keep_labels:
            lparts = ([] if self.labels is None else [self.labels]) + [y for _, y in self._chunks]
            self.labels = torch.cat(lparts)
        self._chunks = []

    def update(self, activation: Tensor, targets: Tensor | None) -> None:
        z = activation.mean(2)  # (B, C), a new tensor
        b = z.shape[0]
        labels = targets.to(z.device, torch.long) if self.keep_labels else None
        free = min(self.max_samples - self.stored, b)
        if free > 0:
            self._chunks.append((z[:free], labels[:free] if labels is not None else None))
            self.stored += free
        if free < b:  # reservoir: image t (0-based) replaces a random slot with probability max / (t + 1)
            self._consolidate()
            t = torch.arange(self.seen + free, self.seen + b, dtype=torch.float64)
            slot = (torch.rand(b - free, generator=self._gen, dtype=torch.float64) * (t + 1)).long()
            accept = slot < self.max_samples
            src = torch.arange(free, b)[accept]
            slot = slot[accept]
            if slot.numel():
                # a slot drawn twice in one batch keeps the later image, as sequential sampling would
                order = torch.arange(slot.numel())
                last = torch.full((self.max_samples,), -1, dtype=torch.long).scatter_reduce(
                    0, slot, order, reduce="amax")
                keep = last[slot] == order
                src, slot = src[keep].to(z.device), slot[keep].to(z.device)
                self.values[slot] = z[src]
                if self.keep_labels:
                    self.labels[slot] = labels[src]
        self.seen += b

    def samples(self) -> tuple[Tensor, Tensor | None]:
        """Stored responses ``(n, C)`` and labels ``(n,)`` (or ``None``)."""
        self._consolidate()
        if self.values is None:
            return torch.empty(0, self.channels), None
        return self.values, (self.labels if self.keep_labels else None)

    def all_reduce(self) -> None:
        values, labels = self.samples()
        device = values.device
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(distributed_world())]
        dist.all_gather(sizes, torch.tensor([self.stored], device=device))
        biggest = int(max(s.item() for s in sizes))
        padded = torch.zeros(biggest, self.channels, device=device)
        padded[:self.stored] = values.to(device)
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        merged = torch.cat([g[:int(s.item())] for g, s in zip(gathered, sizes, strict=True)])
        merged_labels = None
        if self.keep_labels:
            lab = torch.zeros(biggest, dtype=torch.long, device=device)
            lab[:self.stored] = labels
            gathered_l = [torch.empty_like(lab) for _ in sizes]
            dist.all_gather(gathered_l, lab)
            merged_labels = torch.cat([g[:int(s.item())] for g, s in zip(gathered_l, sizes, strict=True)])
        seen = torch.tensor([self.seen], dtype=torch.long, device=device)
        dist.all_reduce(seen)
        if merged.shape[0] > self.max_samples:  # same seeded choice on every rank
            keep = torch.randperm(merged.shape[0], generator=torch.Generator().manual_seed(0))[:self.max_samples]
            merged = merged[keep.to(device)]
            merged_labels = merged_labels[keep.to(device)] if merged_labels is not None else None
        self.values, self.labels = merged, merged_labels
        self.stored = merged.shape[0]
        self.seen = int(seen.item())


#: values binned at a time by :class:`MapEntropySum` (cache-sized)
_CHUNK_VALUES = 1 << 18


def _positions(activation: Tensor, picks: Tensor) -> Tensor:
    """``activation[i, :, picks[i]]`` for every image ``i``: ``(batch, channels, n)`` from ``(batch, channels, S)``."""
    b, c, s = activation.shape
    picks = picks.clamp_max_(s - 1)
    tokens = activation.transpose(1, 2)
    if tokens.is_contiguous():  # (batch, positions, channels) in memory (tokens, channels-last): copy whole rows
        rows = picks + torch.arange(0, b * s, s, device=picks.device).unsqueeze(1)
        return tokens.reshape(b * s, c).index_select(0, rows.view(-1)).view(b, -1, c).transpose(1, 2)
    return activation.gather(2, picks.unsqueeze(1).expand(b, c, picks.shape[1]))


class MapEntropySum(LayerStatistic):
    """Sum over images of the spatial histogram entropy of every feature map, and the image count.

    Per image and channel, the map's ``positions`` values are put in ``bins`` equal-width bins whose range is
    that image's range over the whole layer (``bin_range="layer"``: a flat map gets low entropy) or the map's
    own min/max (``bin_range="map"``). ``bins=None`` picks ``clamp(ceil(sqrt(positions)), 2, 64)``.

    ``samples=None`` bins every position (exact). ``samples=P`` bins only ``P`` positions of maps larger than that,
    drawn per image by jittered stratified sampling (one uniform position in each of ``P`` equal strata of the
    flattened map; the same positions for all channels of an image, new ones for every image, from a generator
    seeded with ``seed``); the bin range is still taken over all positions. The plug-in entropy of ``P`` values is
    biased low by about ``(m - 1) / (2 P)`` (``m`` occupied bins, Miller 1955) where the exact one is biased by
    ``(m - 1) / (2 S)`` (``S`` positions), so ``(m - 1) (1 / (2 P) - 1 / (2 S))`` is added to bring the sampled
    entropy to the exact one's expectation.
    """

    def __init__(self, channels: int, bins: int | None, bin_range: str, samples: int | None = None,
                 seed: int = 0) -> None:
        self.channels = channels
        self.bins = bins
        self.bin_range = bin_range
        self.samples = samples
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._table: Tensor | None = None
        self._table_key: tuple | None = None
        self.total: Tensor | None = None
        self.count = 0

    @property
    def num_images(self) -> int:
        return self.count

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            self._gen = torch.Generator(device=device).manual_seed(self.seed)
        return self._gen

    def _count_log_counts(self, n: int, s: int, device: torch.device) -> Tensor:
        """``T[k] = k log k - [k > 0] n mm`` for ``k = 0 .. n``, ``mm = 1 / (2 n) - 1 / (2 s)`` the Miller-Madow shift
        per occupied bin (0 when ``n = s``), so that ``log n - mm - sum_b T[count_b] / n`` is the entropy of a
        histogram of ``n`` values moved to the ``s``-value plug-in's expectation."""
        key = (n, s, device)
        if self._table_key != key:
            k = torch.arange(n + 1, dtype=torch.float64)
            self._table = (torch.special.xlogy(k, k) - (k > 0).double() * (0.5 - 0.5 * n / s)).float().to(device)
            self._table_key = key
        return self._table

    def update(self, activation: Tensor, targets: Tensor | None) -> None:
        b, c, s = activation.shape
        if self.bins is None:
            self.bins = min(64, max(2, math.ceil(math.sqrt(s))))
        bins, cells = self.bins, self.bins + 1
        device = activation.device
        # bin range: the image's range over the layer, or the map's; the values binned below never leave it
        dims = (1, 2) if self.bin_range == "layer" else 2
        lo, hi = activation.amin(dims, keepdim=True), activation.amax(dims, keepdim=True)
        span = hi - lo
        scale = torch.where(span > 0, bins / span.clamp_min(1e-30), torch.zeros_like(span))  # finite: no 0 * inf
        n = s if self.samples is None else min(s, self.samples)
        values = activation
        if n < s:  # one position in each of n equal strata of the flattened map, the same for all channels
            strata = torch.rand(b, n, generator=self._generator(device), device=device)
            values = _positions(activation, strata.add_(torch.arange(n, device=device)).mul_(s / n).long())
        dtype = torch.int32 if b * c * cells < 2**31 else torch.int64
        counts = torch.empty(b * c, cells, dtype=torch.long, device=device)
        step = max(1, _CHUNK_VALUES // (c * n))  # images at a time: a chunk stays in cache through all passes
        for i in range(0, b, step):
            j = min(b, i + step)
            # (x - lo) * bins / span lies in [0, bins] (x >= lo is exact in floating point): bin = its integer part,
            # with the maximum, which lands on ``bins``, counted in the last bin; the hook has checked finiteness
            part = values[i:j].sub_(lo[i:j]) if values is not activation else values[i:j] - lo[i:j]  # samples: a copy
            cell = part.mul_(scale[i:j]).to(dtype)
            cell += torch.arange(0, (j - i) * c * cells, cells, device=device, dtype=dtype).view(j - i, c, 1)
            # counting ignores the order: read the cells in memory order (token layouts too), without a copy
            cell = cell.view(-1) if cell.is_contiguous() else cell.transpose(1, 2).reshape(-1)
            counts[i * c:j * c] = torch.bincount(cell, minlength=(j - i) * c * cells).view(-1, cells)
        counts[:, bins - 1] += counts[:, bins]
        table = self._count_log_counts(n, s, device)
        count_log_count = table.index_select(0, counts[:, :bins].reshape(-1)).view(b * c, bins).sum(1)
        h = count_log_count.mul_(-1 / n).add_(math.log(n) - (0.5 / n - 0.5 / s)).clamp_min_(0).view(b, c).sum(0)
        self.total = h if self.total is None else self.total + h
        self.count += b

    def mean(self) -> Tensor:
        if self.total is None:
            raise RuntimeError("no images were observed")
        return self.total / self.count

    def all_reduce(self) -> None:
        device = self.total.device
        packed = torch.cat([self.total, torch.tensor([float(self.count)], device=device)])
        dist.all_reduce(packed)
        self.total, self.count = packed[:-1], int(packed[-1].item())
