"""EFP (Li et al. 2019): iterated prune / fine-tune rounds with a features selection module."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Pipeline, PipelineContext, layer_widths, prunable_layers, ratio_keeping, resolve_ratios

__all__ = ["EFPPipeline", "select_maps"]


def select_maps(scores: torch.Tensor, alpha: float, min_keep: int) -> int:
    """How many maps the selection module drops from a layer with these per-map ``scores``: those scoring below
    ``alpha * mean(scores)``, keeping at least ``min_keep``."""
    n = scores.numel()
    drop = int((scores < alpha * scores.mean()).sum())
    return max(0, min(drop, n - min_keep))


class EFPPipeline(Pipeline):
    """EFP, Li, Wang, Peng, Kumar, Yin, "Using Feature Entropy to Guide Filter Pruning for Efficient Convolutional
    Networks", ICANN 2019: feature-map entropy (``feature-map-entropy``) and a features selection module that
    decides from the entropies how many maps each layer loses, in rounds of prune / fine-tune.

    Reading [I] (the paper's text is not available): in each round, for every group (rooted at a prunable layer), the
    maps whose score is below ``alpha`` times the group's mean score are dropped, keeping at least ``min_keep``
    (``min_keep_ratio`` of the original width if larger); the criterion is re-measured on the current model at
    every round; rounds repeat (each followed by ``finetune``) until ``rounds`` are done, the ``speed_up`` / ``ratio``
    target (overall channel ratio removed) is reached, or a round removes nothing. Scores are the criterion's
    group scores before normalisation (so that ``alpha x mean`` is a fraction of the layer's own entropy).

    With a per-layer table (``ratios=``: the final fraction of each layer's original maps to remove, by layer name or
    glob pattern), the table is a budget: each round drops what the selection module selects, at most down to the
    layer's budget, and the last round drops whatever is left of it, so the final widths are the table's (the
    selection module decides when each map goes and which; layers outside the table are not pruned). Reading [I]:
    this is how a recipe reaches the paper's reported parameter and FLOP counts.

    Args:
        alpha: the selection threshold's fraction of the layer mean (e.g. 0.8).
        rounds: at most this many prune / fine-tune rounds.
        min_keep: keep at least this many maps per layer.
        min_keep_ratio: ... and at least this fraction of the layer's original maps.
    """

    name = "efp"
    default_importance = "feature-map-entropy"

    def __init__(self, importance: Any = None, *, alpha: float = 0.8, rounds: int = 4, min_keep: int = 1,
                 min_keep_ratio: float = 0.1, **kwargs: Any) -> None:
        super().__init__(importance, **kwargs)
        if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1.5):
            raise ValueError(f"alpha must be in (0, 1.5], got {alpha!r}")
        if not (isinstance(rounds, int) and rounds >= 1):
            raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
        if not (isinstance(min_keep, int) and min_keep >= 1):
            raise ValueError(f"min_keep must be an integer >= 1, got {min_keep!r}")
        if not 0 <= min_keep_ratio < 1:
            raise ValueError(f"min_keep_ratio must be in [0, 1), got {min_keep_ratio!r}")
        self.alpha, self.rounds, self.min_keep, self.min_keep_ratio = float(alpha), rounds, min_keep, min_keep_ratio

    def _check_target(self, model, ratio, ratios, speed_up) -> None:
        if ratios and (ratio is not None or speed_up is not None):
            raise ValueError("give one target: ratios= (a per-layer budget), ratio= or speed_up= (overall)")

    def selection(self, ctx: PipelineContext, original: dict[str, int]) -> dict[str, float]:
        """One round's per-layer ratios (of the current widths) from the selection module."""
        engine = ctx.engine()
        work = engine.fresh_copy()
        engine.measure(work, fresh=True)
        engine.importance.normalizer = None  # the engine's own copy: raw entropies, so alpha x mean is meaningful
        table = {}
        for name, scores in engine.group_scores(work).items():
            keep = max(self.min_keep, math.ceil(self.min_keep_ratio * original.get(name, scores.numel())))
            drop = select_maps(scores, self.alpha, keep)
            if drop > 0:
                table[name] = ratio_keeping(scores.numel(), scores.numel() - drop)
        return table

    def _run(self, ctx: PipelineContext, ratio, ratios, speed_up) -> None:
        original = layer_widths(ctx.model)
        chosen = set(prunable_layers(ctx.model, self.heads))
        if ratios:
            budget = resolve_ratios(ctx.model, ratios, prunable_layers(ctx.model, self.heads))
            # the widths the table leaves, as a one-shot prune of the table would (Torch-Pruning keeps int(c(1-r)))
            final = {n: int(original[n] * (1 - r)) for n, r in budget.items() if r > 0}
            self._run_budget(ctx, original, final)
        else:
            for k in range(self.rounds):
                if _reached(ctx, original, chosen, ratio, speed_up):
                    break
                table = {n: r for n, r in self.selection(ctx, original).items() if n in chosen}
                if not table:
                    break
                ctx.stage("round", f"round {k + 1}", lambda table=table: ctx.prune(0.0, table))
            if (ratio is not None or speed_up is not None) and not _reached(ctx, original, chosen, ratio, speed_up):
                reached = ctx.report.speed_up
                raise RuntimeError(
                    f"efp: target not reached ({'ratio ' + str(ratio) if ratio is not None else f'{speed_up}x'}; "
                    f"{'unknown' if reached is None else f'{reached:.2f}x'} after {len(ctx.report.stages)} rounds): "
                    f"the selection module (alpha={self.alpha}) selects no more maps; raise alpha or rounds, or give "
                    "ratios= (a per-layer budget)")
        ctx.stage("final", "final", None)

    def _run_budget(self, ctx: PipelineContext, original: dict[str, int], final: dict[str, int]) -> None:
        for k in range(self.rounds):
            now = layer_widths(ctx.model)
            left = {n: now[n] - keep for n, keep in final.items() if now[n] > keep}
            if not left:
                break
            if k == self.rounds - 1:
                drops = left
            else:
                drops = {}
                for n, r in self.selection(ctx, original).items():
                    if n in left:
                        drops[n] = min(left[n], now[n] - int(now[n] * (1 - r)))
            table = {n: ratio_keeping(now[n], now[n] - d) for n, d in drops.items() if d > 0}
            if table:
                ctx.stage("round", f"round {k + 1}", lambda table=table: ctx.prune(0.0, table))


def _reached(ctx: PipelineContext, original: dict[str, int], chosen: set[str], ratio, speed_up) -> bool:
    if speed_up is not None:
        report = ctx.report
        return report.speed_up is not None and report.speed_up >= speed_up
    if ratio is not None:
        now = layer_widths(ctx.model)
        total = sum(original[n] for n in chosen)
        return total > 0 and 1 - sum(now[n] for n in chosen) / total >= ratio
    return False
