"""Tang et al. 2023/2025: one-shot pruning with per-layer ratios, information capacity and independence."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from ..criteria.feature_map_entropy import FeatureMapEntropyImportance
from ..criteria.information_capacity import InformationCapacityImportance
from .base import Pipeline, PipelineContext, prunable_layers, resolve_ratios

__all__ = ["TangPipeline", "rank_correlation"]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors (ties get arbitrary distinct ranks)."""
    if a.numel() < 2:
        return 0.0
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else 0.0


class TangPipeline(Pipeline):
    """Tang et al., "Filter Pruning based on Information Capacity and Independence", arXiv:2303.03645 / IEEE TNNLS
    2025: information capacity + independence (``information-capacity``, data-free), one-shot pruning with a
    ratio per layer (``ratios=``, else uniform ``ratio``, or the smallest uniform ratio reaching ``speed_up``), then
    ``finetune``.

    Feature-guided approximation (``feature_guided=True``; reading [I]): before scoring, the weight-histogram bin
    count of information capacity is chosen among ``bin_candidates`` as the one whose capacity ranking of each
    layer's filters agrees best (mean Spearman correlation over layers) with their feature-map entropy measured on
    the calibration data; pruning itself stays data-free.
    """

    name = "tang"
    default_importance = "information-capacity"

    def __init__(self, importance: Any = None, *, feature_guided: bool = False,
                 bin_candidates: Sequence[int] = (4, 8, 16, 32, 64), **kwargs: Any) -> None:
        super().__init__(importance, **kwargs)
        if feature_guided and not isinstance(self.importance, InformationCapacityImportance):
            raise ValueError("feature_guided=True chooses the bins of information capacity: use that criterion")
        if not bin_candidates or not all(isinstance(b, int) and b >= 2 for b in bin_candidates):
            raise ValueError(f"bin_candidates must be integers >= 2, got {bin_candidates!r}")
        self.feature_guided, self.bin_candidates = feature_guided, list(bin_candidates)
        self.chosen_bins: int | None = None

    def _check_target(self, model, ratio, ratios, speed_up) -> None:
        if sum(x is not None for x in (ratio, ratios, speed_up)) > 1:
            raise ValueError("give one target: ratio=, ratios= or speed_up=")

    def guide_bins(self, ctx: PipelineContext) -> int:
        """The bin count whose capacity ranking agrees best with feature-map entropy on the calibration data."""
        if ctx.calibration_data is None:
            raise ValueError("feature_guided=True needs calibration_data= (a small batch of images is enough)")
        reference = FeatureMapEntropyImportance(normalizer=None, tie_break=False)
        engine = ctx.engine(calibration_data=ctx.calibration_data)
        work = engine.fresh_copy()
        reference.calibrate(work, ctx.calibration_data, max_batches=ctx.calibration_batches)
        target = engine.group_scores(work, reference)
        best, best_agreement = self.bin_candidates[0], -2.0
        for bins in self.bin_candidates:
            capacity = copy.deepcopy(self.importance)
            capacity.bins, capacity.sigma, capacity.normalizer, capacity.tie_break = bins, 0.0, None, False
            scores = engine.group_scores(work, capacity)
            common = [n for n in scores if n in target and scores[n].numel() == target[n].numel()]
            agreement = sum(rank_correlation(scores[n], target[n]) for n in common) / max(1, len(common))
            if agreement > best_agreement:
                best, best_agreement = bins, agreement
        return best

    def _run(self, ctx: PipelineContext, ratio, ratios, speed_up) -> None:
        if self.feature_guided:
            self.chosen_bins = self.importance.bins = self.guide_bins(ctx)
        if ratios:
            table = resolve_ratios(ctx.model, ratios, prunable_layers(ctx.model, self.heads))
            ctx.stage("one-shot", f"{len(table)} layers", lambda: ctx.prune(0.0, table))
        elif speed_up is not None:
            found = ctx.engine().search_ratio(speed_up)[0]
            ctx.stage("one-shot", f"ratio {found:.3f}", lambda: ctx.prune(found))
        else:
            r = 0.5 if ratio is None else ratio
            ctx.stage("one-shot", f"ratio {r:.3f}", lambda: ctx.prune(r))
        ctx.stage("final", "final", None)
