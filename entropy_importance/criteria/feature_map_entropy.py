"""Feature-map entropy (EFP, Li et al. 2019): mean spatial entropy of each feature map over images."""

from __future__ import annotations

from torch import Tensor

from ..calibration.observe import DataDrivenImportance
from ..calibration.statistics import MapEntropySum

__all__ = ["FeatureMapEntropyImportance"]

#: positions of each map binned per image by default (larger maps are sampled; see :class:`MapEntropySum`)
DEFAULT_SAMPLES = 128


class FeatureMapEntropyImportance(DataDrivenImportance):
    """Feature-map entropy (EFP), Li, Wang, Peng, Kumar, Yin, "Using Feature Entropy to Guide Filter Pruning
    for Efficient Convolutional Networks", ICANN 2019.

    For image ``x`` and channel ``j`` the ``H x W`` values of the map ``A_j(x)`` are put in ``m`` equal-width bins,
    ``H_j(x) = -sum_b p_b(x) log p_b(x)``, and the score is ``s_j = (1/n) sum_x H_j(x)``. Only the running sum and
    the image count are kept (streamed; merged across ranks by summing).

    Inferred choices ([I], docs/criteria.md): the bin range is the image's range over the *whole layer*
    (``bin_range="layer"``), so that an almost-flat map gets low entropy, which a per-map range
    (``bin_range="map"``) would hide by stretching it over all bins; ``bins=16`` (``None`` gives
    ``clamp(ceil(sqrt(H*W)), 2, 64)``: 8 bins for 8x8 maps, 32 for 32x32); measured at the output of the
    conv/linear layer (``where="output"``; ``"input"`` is the post-activation input of the consuming layers);
    ``normalizer="standarization"`` for global ranking. The real-data ablation (ResNet-56 on Fashion-MNIST,
    validation split, 2x MAC speed-up, BatchNorm re-estimated) chose ``where="output"`` (+43 points: at the
    consuming layers' input, after ReLU, most of a map is exactly zero), ``bins=16`` (+3.6 over automatic) and
    standardisation for global ranking (+7.9 over ``"mean"``); ``bin_range="map"`` tied (+2.3). See
    docs/benchmarks.md. Token inputs of linear layers ``(B, N, C)`` use the ``N`` tokens as
    positions; a ``(B, C)`` input has one position per map and scores 0.

    Cost: maps with more than ``samples`` positions are estimated from ``samples`` positions per image (jittered
    stratified sampling, new positions for every image, bin range from the whole map or layer, Miller-Madow
    correction to the full map's plug-in bias; :class:`~entropy_importance.calibration.statistics.MapEntropySum`);
    ``samples=None`` bins every position (exact). The agreement of the two rankings is measured in
    docs/benchmarks.md.
    """

    def __init__(self, bins: int | None = 16, bin_range: str = "layer", where: str = "output",
                 samples: int | None = DEFAULT_SAMPLES, normalizer="standarization", **kwargs) -> None:
        super().__init__(where=where, normalizer=normalizer, **kwargs)
        if bins is not None and (not isinstance(bins, int) or bins < 2):
            raise ValueError(f"bins must be an integer >= 2 or None (automatic), got {bins!r}")
        if bin_range not in ("layer", "map"):
            raise ValueError(f"bin_range must be 'layer' or 'map', got {bin_range!r}")
        if samples is not None and (not isinstance(samples, int) or samples < 2):
            raise ValueError(f"samples must be an integer >= 2 or None (every position), got {samples!r}")
        self.bins = bins
        self.bin_range = bin_range
        self.samples = samples

    def new_statistic(self, channels: int) -> MapEntropySum:
        return MapEntropySum(channels, self.bins, self.bin_range, samples=self.samples)

    def score_statistic(self, stat: MapEntropySum) -> Tensor:
        return stat.mean()
