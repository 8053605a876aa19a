"""2PFPCE (Min et al. 2018): a global phase, then a layer-wise phase, with a maximum-entropy filter freeze."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..engine import tp_macs
from .base import Pipeline, PipelineContext, Stage, layer_widths

__all__ = ["TwoPhasePipeline"]

_TOLERANCE = 0.05  # the overshoot of a speed-up target that a step may leave (Engine.search_ratio's)


class TwoPhasePipeline(Pipeline):
    """2PFPCE, Min, Wang, Chen, Xu, Chen, "2PFPCE: Two-Phase Filter Pruning Based on Conditional Entropy",
    arXiv:1809.02220, 2018: conditional entropy (``conditional-entropy``, needs labelled calibration data).

    Phase 1 (``"global"``): steps of ``step_ratio`` of the current channels ranked across all layers (global
    ranking, per-layer normalised scores), each followed by ``finetune`` and ``evaluate``, while the metric stays
    within ``threshold`` of the unpruned model's (the step that crosses it ends the phase and is kept). Phase 2
    (``"layer-wise"``): steps of ``step_ratio`` in every layer until the target (``speed_up``, or ``ratio`` of the
    original channels removed) is reached; with ``speed_up``, a step that overshoots it by more than 5 % is replaced
    by one at the smallest ratio that reaches it (so the result lands on the target, within the engine's tolerance).
    Without ``evaluate`` phase 1 runs until the target. During every
    fine-tune the ``freeze_fraction`` of each layer's channels with the highest marginal entropy ``H(Z_j)`` get no
    update (:func:`~entropy_importance.pipelines.freeze_max_entropy`). Readings [I]: the step size, the crossing step
    being kept, the freeze fraction (the paper's text is not available).

    Args:
        threshold: allowed drop of the metric in phase 1 (same unit as ``evaluate``: 0.02 = 2 points of accuracy
            in [0, 1]).
        step_ratio: channels removed per step, of the current width.
        freeze_fraction: fraction of each group frozen during fine-tuning (0: no freeze).
        max_steps: at most this many steps in both phases together.
    """

    name = "2pfpce"
    default_importance = "conditional-entropy"

    def __init__(self, importance: Any = None, *, threshold: float = 0.02, step_ratio: float = 0.1,
                 freeze_fraction: float = 0.2, max_steps: int = 40, **kwargs: Any) -> None:
        super().__init__(importance, **kwargs)
        if not (isinstance(threshold, (int, float)) and threshold >= 0):
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
        if not 0 < step_ratio < 0.5:
            raise ValueError(f"step_ratio must be in (0, 0.5), got {step_ratio!r}")
        if not 0 <= freeze_fraction <= 1:
            raise ValueError(f"freeze_fraction must be in [0, 1], got {freeze_fraction!r}")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
        self.threshold, self.step_ratio, self.freeze_fraction, self.max_steps = threshold, step_ratio, \
            freeze_fraction, max_steps

    def _check_target(self, model, ratio, ratios, speed_up) -> None:
        if ratios:
            raise ValueError("2pfpce ranks channels itself: give speed_up= or ratio= as the target")
        if ratio is None and speed_up is None:
            raise ValueError("2pfpce needs a target: speed_up= or ratio=")

    def _run(self, ctx: PipelineContext, ratio, ratios, speed_up) -> None:
        finetune = ctx.finetune
        if finetune is not None and self.freeze_fraction > 0:
            ctx.finetune = self._frozen(finetune, ctx)
        original = _channels(ctx.model)
        base = ctx.report.metric_before
        phase = "global"
        for k in range(self.max_steps):
            if _reached(ctx, original, ratio, speed_up):
                break
            glob = phase == "global"
            record = ctx.stage("step", f"{phase} {k + 1}", lambda glob=glob: self._step(ctx, glob, speed_up),
                               phase=phase)
            if glob and base is not None and record.metric is not None and base - record.metric > self.threshold:
                phase = "layer-wise"
        else:
            if not _reached(ctx, original, ratio, speed_up):
                raise RuntimeError(f"2pfpce: target not reached within max_steps={self.max_steps} steps of "
                                   f"{self.step_ratio}; raise max_steps or step_ratio")
        ctx.stage("final", "final", None)
        ctx.finetune = finetune

    def _step(self, ctx: PipelineContext, glob: bool, speed_up: float | None) -> None:
        """One step of ``step_ratio``; where it overshoots the speed-up target by more than the engine's tolerance,
        it is replaced by the step of the smallest ratio that reaches the target (in the layer-wise phase, by the
        global step of the smallest ratio when even one channel per layer overshoots and the global step lands
        closer)."""
        before = ctx.model
        ctx.prune(self.step_ratio, global_pruning=glob)
        remaining = _remaining_speed_up(ctx, speed_up)
        if remaining is None:
            return
        # the MACs of the model before this step are the last stage's (the report's), counted already
        macs_after = tp_macs(ctx.model, ctx.example_inputs)
        if macs_after and ctx.report.macs_after / macs_after > remaining * (1 + _TOLERANCE):
            ctx.model = before
            ctx.prune_to_speed_up(remaining, global_pruning=glob)
            if not glob:  # a layer-wise step moves every layer by a channel at least: on narrow layers that can
                # overshoot far; the finest step that lands is a global one, taken when it lands closer
                uniform, macs_uniform = ctx.model, tp_macs(ctx.model, ctx.example_inputs)
                if macs_uniform and ctx.report.macs_after / macs_uniform > remaining * (1 + _TOLERANCE):
                    ctx.model = before
                    ctx.prune_to_speed_up(remaining, global_pruning=True)
                    macs_global = tp_macs(ctx.model, ctx.example_inputs)
                    if not macs_global or macs_global < macs_uniform:
                        ctx.model = uniform

    def _frozen(self, finetune, ctx: PipelineContext):
        from .freeze import freeze_max_entropy

        def frozen_finetune(model: nn.Module, stage: Stage) -> None:
            with freeze_max_entropy(model, self.importance, fraction=self.freeze_fraction,
                                    example_inputs=ctx.example_inputs, calibration_data=ctx.calibration_data):
                finetune(model, stage)

        return frozen_finetune


def _channels(model: nn.Module) -> int:
    return sum(layer_widths(model).values())


def _remaining_speed_up(ctx: PipelineContext, speed_up: float | None) -> float | None:
    """The MAC speed-up still to gain on the current model, or None without a speed-up target or MAC counts."""
    report = ctx.report
    if speed_up is None or not report.macs_before or not report.macs_after:
        return None
    return speed_up * report.macs_after / report.macs_before


def _reached(ctx: PipelineContext, original: int, ratio, speed_up) -> bool:
    if speed_up is not None:
        s = ctx.report.speed_up
        return s is not None and s >= speed_up
    if ratio is not None:
        return 1 - _channels(ctx.model) / original >= ratio - 1e-9
    return False
