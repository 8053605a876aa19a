"""EFP (Li et al. 2019): iterated prune / fine-tune rounds with a features selection module."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..engine import Engine, tp_macs
from .base import Pipeline, PipelineContext, layer_widths, prunable_layers, ratio_keeping, resolve_ratios

__all__ = ["EFPPipeline", "select_maps", "relative_scores"]

#: how far the round that lands on a ``speed_up`` / ``ratio`` target may overshoot it (2PFPCE's and the engine's)
_TOLERANCE = 0.05
#: an adapted round stops searching once it is this close above its goal
_PRECISION = 0.01


def select_maps(scores: torch.Tensor, alpha: float, min_keep: int) -> int:
    """How many maps the selection module drops from a layer with these per-map ``scores``: those scoring below
    ``alpha * mean(scores)``, keeping at least ``min_keep``."""
    n = scores.numel()
    drop = int((scores < alpha * scores.mean()).sum())
    return max(0, min(drop, n - min_keep))


def relative_scores(scores: torch.Tensor) -> torch.Tensor:
    """Each map's score as a fraction of its layer's mean score: the quantity the selection module compares with
    ``alpha`` (a map is dropped when its relative score is below ``alpha``). A layer whose mean is not positive
    (all maps flat, or a criterion with negative scores) reads 1.0 for every map."""
    scores = scores.detach().double()
    mean = scores.mean()
    if not (math.isfinite(float(mean)) and float(mean) > 0):
        return torch.ones_like(scores)
    return scores / mean


@dataclass
class _Probe:
    """One candidate round: the ``count`` lowest maps of the round's global order removed from a copy."""

    count: int
    gain: float
    model: nn.Module | None = None
    pruner: Any = None


class EFPPipeline(Pipeline):
    """EFP, Li, Wang, Peng, Kumar, Yin, "Using Feature Entropy to Guide Filter Pruning for Efficient Convolutional
    Networks", ICANN 2019: feature-map entropy (``feature-map-entropy``) and a features selection module that
    decides from the entropies how many maps each layer loses, in rounds of prune / fine-tune.

    Reading [I] (the paper's text is not available): in each round, for every group (rooted at a prunable layer), the
    maps whose score is below ``alpha`` times the group's mean score are dropped, keeping at least ``min_keep``
    (``min_keep_ratio`` of the original width if larger); the criterion is re-measured on the current model at
    every round. Scores are the criterion's group scores before normalisation (so that ``alpha x mean`` is a
    fraction of the layer's own entropy).

    Without a target, rounds repeat (each followed by ``finetune``) until ``rounds`` are done or a round selects
    nothing: the paper's rule alone.

    With a ``speed_up`` (MAC, Torch-Pruning's counter) or ``ratio`` (channels removed from the prunable layers)
    target, the target is spread over the rounds: with ``L`` rounds left and gain ``g`` so far (the speed-up, or
    ``1 / (1 - removed)`` for a ratio), the round must reach ``g * (T / g) ** (1 / L)``, so every round gives about
    the same factor and the last one lands on the target ``T``. A round takes the paper's selection when it reaches
    its share and does not overshoot ``T`` by more than 5 %; otherwise (it selects nothing or too little, or more
    than the whole target) the round adapts the threshold: every map's score relative to its layer's mean
    (:func:`relative_scores`, the quantity compared with ``alpha``) is ranked across layers, and the smallest number
    of lowest-ranked maps (each layer's floor kept) reaching the round's goal is found by a search on pruned copies
    (their MACs counted; regula falsi on ``gain ** -0.5``, about linear in the maps removed). This is the paper's
    rule at one adapted ``alpha`` for all layers, so both selections are prefixes of one order: the maps the paper's
    rule drops (dead maps first) go before any other, and a round that must take fewer takes the lowest of them.
    Reading [I]: one relative threshold across layers rather than a bisection per layer, since how much each layer
    gives is what the rule decides, and a map far below its own layer's mean entropy stays the first to go. The
    stage is named
    ``"round k"`` when the paper's threshold was used and ``"round k (adapted alpha a)"`` otherwise;
    ``report.options["selection"]`` lists per round the rule, the ``alpha`` used, the maps the paper's rule selected
    and the maps removed, the round's goal and what it reached (in the target's units). A target that even every
    layer at its floor cannot reach is an error before the first round.

    With a per-layer table (``ratios=``: the final fraction of each layer's original maps to remove, by layer name or
    glob pattern), the table is a budget: each round drops what the selection module selects, at most down to the
    layer's budget, and the last round drops whatever is left of it, so the final widths are the table's (the
    selection module decides when each map goes and which; layers outside the table are not pruned). Reading [I]:
    this is how a recipe reaches the paper's reported parameter and FLOP counts.

    Args:
        alpha: the selection threshold's fraction of the layer mean (e.g. 0.8).
        rounds: at most this many prune / fine-tune rounds (with a target: the rounds it is spread over).
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

    # ------------------------------------------------------------------------------------------ scores
    def _scored(self, ctx: PipelineContext) -> tuple[Engine, dict[str, torch.Tensor]]:
        """An engine on the current model and its groups' raw scores (the criterion re-measured)."""
        engine = ctx.engine()
        work = engine.fresh_copy()
        engine.measure(work, fresh=True)
        normalizer = getattr(engine.importance, "normalizer", None)
        engine.importance.normalizer = None  # raw entropies, so that alpha x mean is a fraction of the layer's own
        try:
            scores = engine.group_scores(work)
        finally:
            engine.importance.normalizer = normalizer
        return engine, scores

    def _floor(self, name: str, width: int, original: dict[str, int]) -> int:
        return max(self.min_keep, math.ceil(self.min_keep_ratio * original.get(name, width)))

    def selection(self, ctx: PipelineContext, original: dict[str, int]) -> dict[str, float]:
        """One round's per-layer ratios (of the current widths) from the selection module (the paper's rule)."""
        _, scores = self._scored(ctx)
        table = {}
        for name, s in scores.items():
            drop = select_maps(s, self.alpha, self._floor(name, s.numel(), original))
            if drop > 0:
                table[name] = ratio_keeping(s.numel(), s.numel() - drop)
        return table

    # ------------------------------------------------------------------------------------------ the run
    def _run(self, ctx: PipelineContext, ratio, ratios, speed_up) -> None:
        original = layer_widths(ctx.model)
        chosen = set(prunable_layers(ctx.model, self.heads))
        if ratios:
            budget = resolve_ratios(ctx.model, ratios, prunable_layers(ctx.model, self.heads))
            # the widths the table leaves, as a one-shot prune of the table would (Torch-Pruning keeps int(c(1-r)))
            final = {n: int(original[n] * (1 - r)) for n, r in budget.items() if r > 0}
            self._run_budget(ctx, original, final)
        elif ratio is None and speed_up is None:
            self._run_paper(ctx, original, chosen)
        else:
            self._run_target(ctx, original, chosen, ratio, speed_up)
        ctx.stage("final", "final", None)

    def _run_paper(self, ctx: PipelineContext, original: dict[str, int], chosen: set[str]) -> None:
        for k in range(self.rounds):
            if self._replayed(ctx, k):
                continue
            table = {n: r for n, r in self.selection(ctx, original).items() if n in chosen}
            if not table:
                break
            ctx.stage("round", f"round {k + 1}", lambda table=table: ctx.prune(0.0, table))

    @staticmethod
    def _replayed(ctx: PipelineContext, k: int) -> bool:
        """When resuming: round ``k`` (stage ``k``) was done before; its record is replayed, nothing recomputed."""
        if k < len(ctx.done) and ctx.done[k].stage.kind == "round":
            ctx.stage("round", ctx.done[k].stage.name, None)
            return True
        return False

    def _run_target(self, ctx: PipelineContext, original: dict[str, int], chosen: set[str], ratio, speed_up) -> None:
        report = ctx.report
        if speed_up is not None and not report.macs_before:
            raise RuntimeError("efp: speed_up needs MAC counts, which Torch-Pruning's counter cannot produce for "
                               "this model; use ratio= instead")
        target = float(speed_up) if speed_up is not None else 1.0 / (1.0 - ratio)
        total = sum(original[n] for n in chosen)

        def gain(model: nn.Module) -> float:  # speed-up, or 1 / (1 - channels removed): >= target once reached
            if speed_up is not None:
                macs = tp_macs(model, ctx.example_inputs)
                if not macs:
                    raise RuntimeError("efp: Torch-Pruning's MAC counter fails on the pruned model; use ratio=")
                return report.macs_before / macs
            widths = layer_widths(model)
            return total / max(1, sum(widths[n] for n in chosen))

        def units(g: float) -> float:  # a gain in the target's own units (speed-up, or ratio removed)
            return g if speed_up is not None else 1.0 - 1.0 / g

        selection = report.options.setdefault("selection", [])
        checked = False
        for k in range(self.rounds):
            if self._replayed(ctx, k):
                continue
            now = gain(ctx.model)
            if now >= target * (1 - 1e-9):
                break
            left = self.rounds - k
            goal = target if left == 1 else now * (target / now) ** (1.0 / left)
            engine, scores = self._scored(ctx)
            order, paper = self._order(scores, original, chosen)
            widths = layer_widths(ctx.model)

            def probe(count: int, engine=engine, order=order, widths=widths) -> _Probe:
                work, pruner = engine.one_shot(0.0, _table(order, count, widths))
                return _Probe(count, gain(work), work, pruner)

            deepest = None
            if not checked:  # before the first round: can the floors reach the target at all?
                deepest, checked = probe(len(order)), True
                if deepest.gain < target * (1 - 1e-9):
                    raise RuntimeError(
                        f"efp: target not reached ({_what(ratio, speed_up)}): even with every layer at its floor "
                        f"(min_keep={self.min_keep}, min_keep_ratio={self.min_keep_ratio}) the model reaches "
                        f"{units(deepest.gain):.3g}; lower the target or the floors")
            current = _Probe(0, now)
            taken = probe(paper) if paper > 0 else current
            if paper > 0 and goal * (1 - 1e-9) <= taken.gain <= target * (1 + _TOLERANCE):
                rule, alpha = "paper", self.alpha
            else:
                rule = "adapted"
                if taken.gain < goal * (1 - 1e-9):  # nothing or too little selected: more maps, in the same order
                    hi = deepest if deepest is not None else probe(len(order))
                    taken = _search(probe, taken, hi, goal) if hi.gain >= goal * (1 - 1e-9) else hi
                else:  # the paper's rule overshoots the target: the fewest of its maps that reach the round's goal
                    taken = _search(probe, current, taken, goal)
                alpha = _alpha(order, taken.count)
            if taken.count == 0:
                break
            name = f"round {k + 1}" if rule == "paper" else f"round {k + 1} (adapted alpha {alpha:.3g})"
            selection.append({"round": k + 1, "rule": rule, "alpha": round(alpha, 6), "paper_maps": paper,
                              "maps": taken.count, "goal": units(goal), "reached": units(taken.gain)})
            ctx.stage("round", name, lambda taken=taken, engine=engine: self._adopt(ctx, engine, taken))
        if gain(ctx.model) < target * (1 - 1e-9):
            raise RuntimeError(
                f"efp: target not reached ({_what(ratio, speed_up)}; {units(gain(ctx.model)):.3g} after "
                f"{sum(s.stage.kind == 'round' for s in report.stages)} rounds): the floors (min_keep="
                f"{self.min_keep}, min_keep_ratio={self.min_keep_ratio}) bind; lower them or the target")

    def _order(self, scores: dict[str, torch.Tensor], original: dict[str, int], chosen: set[str]
               ) -> tuple[list[tuple[float, int, str]], int]:
        """The round's global order of the maps that may go (each layer's lowest scores above its floor) as
        ``(relative score, rank in its layer, layer)``, and how many of its first maps the paper's rule selects:
        those maps first, then the others by score relative to their layer's mean, ties by layer order."""
        keyed, paper = [], 0
        for position, (name, s) in enumerate(scores.items()):
            if name not in chosen:
                continue
            floor = self._floor(name, s.numel(), original)
            selected = select_maps(s, self.alpha, floor)
            paper += selected
            values = torch.sort(relative_scores(s)).values.tolist()[:max(0, s.numel() - floor)]
            keyed += [(rank >= selected, value, position, rank, name) for rank, value in enumerate(values)]
        keyed.sort()
        return [(value, rank, name) for _, value, _, rank, name in keyed], paper

    def _adopt(self, ctx: PipelineContext, engine: Engine, probe: _Probe) -> None:
        engine.finish(probe.model, [probe.pruner], 1, 0.0, {"pipeline": self.name})
        ctx.model = probe.model

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


def _table(order: list[tuple[float, int, str]], count: int, widths: dict[str, int]) -> dict[str, float]:
    """The per-layer ratios removing the first ``count`` maps of the round's order."""
    drops: dict[str, int] = {}
    for _, _, name in order[:count]:
        drops[name] = drops.get(name, 0) + 1
    return {n: ratio_keeping(widths[n], widths[n] - d) for n, d in drops.items()}


def _what(ratio, speed_up) -> str:
    return f"ratio {ratio}" if speed_up is None else f"{speed_up}x"


def _alpha(order: list[tuple[float, int, str]], count: int) -> float:
    """The threshold whose rule (relative score below it) selects the first ``count`` maps of the order: midway
    between the last map taken and the first one left."""
    if count == 0:
        return order[0][0] if order else 0.0
    last = order[count - 1][0]
    return (last + order[count][0]) / 2 if count < len(order) else last + 1e-6


def _search(probe, lo: _Probe, hi: _Probe, goal: float) -> _Probe:
    """The probe of the fewest maps reaching ``goal`` (``lo`` below it, ``hi`` reaching it): regula falsi
    (Illinois) on ``gain ** -0.5`` (about linear in the maps removed: MACs fall with in x out widths), every third
    probe a bisection; stops once a probe reaches the goal by at most :data:`_PRECISION` more."""
    def y(p: _Probe) -> float:
        return p.gain ** -0.5 - goal ** -0.5  # > 0 below the goal

    y_lo, y_hi, side, n = y(lo), y(hi), 0, 0
    while hi.count - lo.count > 1 and hi.gain > goal * (1 + _PRECISION):
        n += 1
        if n % 3 == 0 or y_lo == y_hi:
            count = (lo.count + hi.count) // 2
        else:
            count = round(lo.count + y_lo * (hi.count - lo.count) / (y_lo - y_hi))
        count = min(max(count, lo.count + 1), hi.count - 1)
        p = probe(count)
        if p.gain >= goal * (1 - 1e-9):
            hi, y_hi = p, y(p)
            y_lo = y_lo / 2 if side == 1 else y_lo
            side = 1
        else:
            lo, y_lo = p, y(p)
            y_hi = y_hi / 2 if side == -1 else y_hi
            side = -1
    return hi
