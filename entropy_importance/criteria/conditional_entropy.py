"""Conditional entropy (2PFPCE, Min et al. 2018): how much label information each channel's response carries."""

from __future__ import annotations

from torch import Tensor

from ..calibration.errors import CalibrationError
from ..calibration.statistics import ResponseSamples
from .estimators import bin_edges, entropy_from_counts, joint_class_counts, mutual_information
from .gap_entropy import GAPEntropyImportance

__all__ = ["ConditionalEntropyImportance"]


class ConditionalEntropyImportance(GAPEntropyImportance):
    """Conditional-entropy criterion, Min, Wang, Chen, Xu, Chen, "2PFPCE: Two-Phase Filter Pruning Based on
    Conditional Entropy", arXiv:1809.02220, 2018.

    Each channel's global-average-pooled response ``Z_j`` is binned (``m`` bins, per-channel edges) jointly with
    the class label ``Y``; the score is ``I(Y; Z_j) = H(Y) - H(Y | Z_j)`` with
    ``H(Y | Z_j) = sum_b p(b) H(Y | Z_j = b)``: channels whose response says least about the label are pruned
    first (ranking by ``-H(Y | Z_j)`` is the same within a layer, since ``H(Y)`` is shared).
    Needs labels: calibrate with ``(input, target)`` batches.

    :meth:`marginal_entropy` gives ``H(Z_j)`` per layer, for the paper's maximum-entropy filter freeze.
    Inferred choices ([I], docs/criteria.md): the per-filter surrogate ``H(Y | Z_j)`` (not the joint over the
    kept set), ``bins=8`` (``None`` gives ``clamp(n // (10 K), 2, 32)``, at least 10 images per (bin, class)
    cell), ``num_classes=None`` takes ``max(label) + 1``, measured at the layer's output (``where="output"``).
    These defaults were chosen by a real-data ablation (docs/benchmarks.md).
    """

    needs_labels = True

    def __init__(self, num_classes: int | None = None, bins: int | None = 8, **kwargs) -> None:
        super().__init__(bins=bins, **kwargs)
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
        self.num_classes = num_classes

    def _joint(self, stat: ResponseSamples) -> Tensor:
        values, labels = stat.samples()
        k = self.num_classes or int(labels.max()) + 1
        bins = self.bins or max(2, min(32, values.shape[0] // (10 * k)))
        lo, hi = bin_edges(values.t(), self.edges)
        return joint_class_counts(values.t(), labels, k, bins, lo, hi)

    def score_statistic(self, stat: ResponseSamples) -> Tensor:
        values, _ = stat.samples()
        if values.shape[0] < self.min_images:
            raise CalibrationError(f"{type(self).__name__} needs at least {self.min_images} calibration images, "
                                   f"got {values.shape[0]}: with fewer every channel gets the same score")
        return mutual_information(self._joint(stat))

    def marginal_entropy(self, layer_name: str) -> Tensor:
        """``H(Z_j)`` of every channel measured at layer ``layer_name`` (same bins as the score)."""
        return entropy_from_counts(self._joint(self._stats[layer_name]).sum(2))
