"""How much of a fine-tune budget each stage of a pipeline gets: :class:`StageBudget`, :func:`split_budget`.

A pipeline calls the caller's ``finetune(model, stage)`` after every stage; with a fixed total budget (training
images, steps, epochs) the caller has to decide each stage's share. Two structures:

* ``"even"``: the total split equally over all stages, the final one included;
* ``"paper"``: short fine-tunes after each pruning stage and a long one at the end, as the papers do (Luo & Wu's
  "short recovery" after every layer and a longer fine-tune of the pruned network; EFP's and 2PFPCE's rounds, then
  a final fine-tune): ``final_share`` of the total at the final stage (``stage.kind == "final"``), the rest split
  equally over the others.

Integer totals are split into integers that sum to the total exactly (shares differ by at most one); a pipeline
that ends before its planned count (EFP or 2PFPCE reaching the target early) leaves the unspent shares to its final
stage, so the stages that ran still sum to the total.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping

import torch.nn as nn

from .base import Pipeline, Stage, prunable_layers, resolve_ratios

__all__ = ["StageBudget", "split_budget", "planned_stages", "STRUCTURES"]

STRUCTURES = ("even", "paper")


def _even(amount: int | float, parts: int, index: int) -> int | float:
    """Part ``index`` of ``amount`` split into ``parts``: integers differing by at most one that sum to ``amount``
    (``floor((i + 1) a / n) - floor(i a / n)``), or equal floats."""
    if isinstance(amount, int):
        return (index + 1) * amount // parts - index * amount // parts
    return amount / parts


class StageBudget:
    """A fine-tune budget split over a pipeline's stages: ``budget(stage)`` is what the stage gets.

    Computes, for a total budget ``total`` (images, steps, epochs: any unit; an ``int`` is split into integers) and
    the number of stages the pipeline runs, ``stages`` (the final one included; :func:`planned_stages` gives it for
    the built-in pipelines), each stage's share:

    * ``structure="even"``: ``total / stages`` each;
    * ``structure="paper"``: the final stage (``stage.kind == "final"``) gets ``final_share x total`` (rounded to the
      nearest integer, halves up, for an ``int`` total) and the other ``stages - 1`` stages split the rest equally:
      short recoveries after each pruning stage and a long final fine-tune, the structure of Luo & Wu 2017 ("An
      Entropy-based Pruning Method for CNN Compression": a short fine-tune after each layer, a longer one at the
      end), EFP (Li et al., ICANN 2019: prune / fine-tune rounds) and 2PFPCE (Min et al. 2018).

    The share of a non-final stage depends only on its index, and the final stage gets the total minus the shares of
    the stages before it, so the shares of the stages that ran always sum to ``total`` exactly (a pipeline that stops
    early leaves its unspent shares to the final fine-tune) and a resumed run (``resume=``, which skips the stages
    already done) gets the same shares as an uninterrupted one. ``stages`` may be an upper bound (EFP's ``rounds + 1``
    when a target may be reached sooner); a non-final stage past it is an error.

    Example::

        budget = StageBudget(4000, planned_stages(pipe, model, speed_up=2.0))  # 4 000 training images in all
        pipe.run(model, x, calibration_data=data, speed_up=2.0,
                 finetune=lambda m, stage: train_on_images(m, budget(stage)))

    Args:
        total: the whole budget (> 0 ``int`` or ``float``; 0 is allowed: every share is then 0).
        stages: how many stages the pipeline runs, the final one included (>= 1).
        structure: ``"paper"`` (default) or ``"even"``.
        final_share: the final stage's fraction of the total with ``"paper"``, in [0, 1].

    Raises:
        ValueError: any argument out of range (one line, at construction).
    """

    def __init__(self, total: int | float, stages: int, *, structure: str = "paper", final_share: float = 0.5) -> None:
        if isinstance(total, bool) or not isinstance(total, (int, float)) or not math.isfinite(total) or total < 0:
            raise ValueError(f"total must be a finite number >= 0 (images, steps, ...), got {total!r}")
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"stages must be an integer >= 1 (the final stage included), got {stages!r}")
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {', '.join(STRUCTURES)}, got {structure!r}")
        if isinstance(final_share, bool) or not isinstance(final_share, (int, float)) or not 0 <= final_share <= 1:
            raise ValueError(f"final_share must be a number in [0, 1], got {final_share!r}")
        self.total, self.stages, self.structure, self.final_share = total, stages, structure, float(final_share)

    @property
    def final_amount(self) -> int | float:
        """The final stage's planned share (when all ``stages`` run)."""
        if self.stages == 1:
            return self.total
        if self.structure == "even":
            return _even(self.total, self.stages, self.stages - 1)
        if isinstance(self.total, int):
            return min(self.total, math.floor(self.final_share * self.total + 0.5))
        return self.final_share * self.total

    def share(self, index: int, final: bool = False) -> int | float:
        """The share of stage ``index`` (0, 1, ...); ``final``: it is the final stage."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"stage index must be an integer >= 0, got {index!r}")
        if final:
            before = [self.share(i) for i in range(min(index, self.stages - 1))]
            return self.total - sum(before) if isinstance(self.total, int) else self.total - math.fsum(before)
        if index >= self.stages - 1:
            raise ValueError(f"stage {index} is past the {self.stages} planned stages (the last is the final one): "
                             "give StageBudget the pipeline's stage count (an upper bound is fine)")
        if self.structure == "even":
            return _even(self.total, self.stages, index)
        return _even(self.total - self.final_amount, self.stages - 1, index)

    def __call__(self, stage: Stage) -> int | float:
        """The share of ``stage`` (as ``finetune(model, stage)`` receives it)."""
        return self.share(stage.index, final=stage.kind == "final")

    def shares(self) -> list[int | float]:
        """Every stage's share when all ``stages`` run, the final stage's last; sums to ``total``."""
        return [self.share(i) for i in range(self.stages - 1)] + [self.share(self.stages - 1, final=True)]

    def __repr__(self) -> str:
        return (f"StageBudget(total={self.total!r}, stages={self.stages}, structure={self.structure!r}, "
                f"final_share={self.final_share})")


def split_budget(total: int | float, stages: int, *, structure: str = "paper", final_share: float = 0.5
                 ) -> list[int | float]:
    """Each stage's share of ``total`` over ``stages`` stages, the final one last (:class:`StageBudget`)."""
    return StageBudget(total, stages, structure=structure, final_share=final_share).shares()


def planned_stages(pipeline: Pipeline, model: nn.Module, *, ratio: float | None = None,
                   ratios: Mapping[str, float] | None = None, speed_up: float | None = None) -> int:
    """How many stages ``pipeline.run(model, ..., ratio= / ratios= / speed_up=)`` runs, the final one included,
    without running anything: exact for the layer-by-layer pipelines (``luo-wu``, ``fec``: one stage per pruned layer,
    or one one-shot stage) and ``tang`` (one one-shot stage); an upper bound for the iterative ones (``efp``:
    ``rounds``; ``2pfpce``: ``max_steps``), which may reach the target sooner.

    Raises:
        TypeError: a pipeline class this function does not know (give :class:`StageBudget` the count yourself).
    """
    from .efp import EFPPipeline
    from .layer_by_layer import LayerByLayerPipeline
    from .tang import TangPipeline
    from .two_phase import TwoPhasePipeline

    if isinstance(pipeline, EFPPipeline):
        return pipeline.rounds + 1
    if isinstance(pipeline, TwoPhasePipeline):
        return pipeline.max_steps + 1
    if isinstance(pipeline, TangPipeline):
        return 2
    if isinstance(pipeline, LayerByLayerPipeline):
        names = prunable_layers(model, pipeline.heads)
        if pipeline.layers is not None:
            names = [n for n in names if any(n == p or fnmatch.fnmatchcase(n, p) for p in pipeline.layers)]
        if ratios:
            table = resolve_ratios(model, ratios, prunable_layers(model, pipeline.heads))
            pruned = [n for n in names if table.get(n, 0.0) > 0]
        elif speed_up is not None:
            pruned = names  # the ratio found for a speed-up > 1 is > 0 in every chosen layer
        else:
            pruned = names if (0.5 if ratio is None else ratio) > 0 else []
        if pipeline.order == "one-shot":
            return 2
        return len(pruned) + 1
    raise TypeError(f"planned_stages does not know {type(pipeline).__name__}: give StageBudget the stage count")
