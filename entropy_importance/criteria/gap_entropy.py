"""GAP entropy (Luo & Wu 2017): entropy of each channel's global-average-pooled response across images."""

from __future__ import annotations

import math

from torch import Tensor

from ..calibration.errors import CalibrationError
from ..calibration.observe import DataDrivenImportance
from ..calibration.statistics import ResponseSamples
from .estimators import EDGE_MODES, EdgeMode, histogram_entropy

__all__ = ["GAPEntropyImportance", "auto_response_bins"]


def auto_response_bins(n: int, cap: int = 100) -> int:
    """``clamp(round(sqrt(n)), 2, cap)``: about ``sqrt(n)`` images per bin (100 bins for 10 000 images)."""
    return max(2, min(cap, round(math.sqrt(n))))


class GAPEntropyImportance(DataDrivenImportance):
    """GAP entropy, Luo & Wu, "An Entropy-based Pruning Method for CNN Compression", arXiv:1706.05791, 2017.

    For channel ``j`` and image ``x``, ``z_j(x) = mean_{h,w} A_j(x)`` is the global-average-pooled response;
    over the calibration images its ``m``-bin histogram gives ``H_j = -sum_b p_b log p_b``. A channel that
    responds the same to every image (dead, constant) has ``H_j = 0`` and is pruned first.

    Memory: the responses themselves are kept, at most ``max_samples`` images per layer (a seeded reservoir
    beyond that), ``max_samples * channels * 4`` bytes per layer; the histogram is taken at scoring time, so
    batching does not change the result. Inferred choices ([I], docs/criteria.md): ``bins=None`` gives
    ``clamp(round(sqrt(n)), 2, 100)`` (100 for n = 10 000); ``edges="channel"`` (per-channel min-max, the paper's
    "divide it into m bins"; ``"layer"`` and ``"quantile"`` are the alternatives); measured at the output of the
    conv/linear layer itself (``where="output"``; ``"input"`` reads the post-activation input of the consuming
    layers instead). These defaults were chosen by a real-data ablation (docs/benchmarks.md). At least two
    calibration images are needed (one response per channel has entropy 0 for every channel).
    """

    min_images = 2

    def __init__(
        self,
        bins: int | None = None,
        edges: EdgeMode = "channel",
        max_samples: int = 4096,
        miller_madow: bool = False,
        where: str = "output",
        **kwargs,
    ) -> None:
        super().__init__(where=where, **kwargs)
        if bins is not None and (not isinstance(bins, int) or bins < 2):
            raise ValueError(f"bins must be an integer >= 2 or None (automatic), got {bins!r}")
        if edges not in EDGE_MODES:
            raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
        if not isinstance(max_samples, int) or max_samples < 2:
            raise ValueError(f"max_samples must be an integer >= 2, got {max_samples!r}")
        self.bins = bins
        self.edges = edges
        self.max_samples = max_samples
        self.miller_madow = miller_madow

    def new_statistic(self, channels: int) -> ResponseSamples:
        return ResponseSamples(channels, self.max_samples, keep_labels=self.needs_labels)

    def score_statistic(self, stat: ResponseSamples) -> Tensor:
        values, _ = stat.samples()
        if values.shape[0] < self.min_images:
            raise CalibrationError(f"{type(self).__name__} needs at least {self.min_images} calibration images, "
                                   f"got {values.shape[0]}: with fewer every channel gets the same score")
        bins = self.bins or auto_response_bins(values.shape[0])
        return histogram_entropy(values.t(), bins, edges=self.edges, miller_madow=self.miller_madow)
