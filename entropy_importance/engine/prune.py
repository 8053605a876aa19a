"""``prune()``: prune any timm / torchvision model with automatic configuration (see :class:`.Engine`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch.nn as nn

from ..recovery import check_method
from ..repairs import GROUP_TIME_LIMIT
from .engine import Engine, PruneReport

__all__ = ["prune"]


def prune(
    model: nn.Module,
    example_inputs: Any,
    importance: Any = "channel-similarity-entropy",
    *,
    ratio: float = 0.5,
    speed_up: float | None = None,
    schedule: str = "one-shot",
    step_ratio: float = 0.02,
    ratio_dict: Mapping[str, float] | None = None,
    calibration_data: Iterable | None = None,
    calibration_batches: int | None = None,
    ignored_layers: Iterable[nn.Module] | None = None,
    heads: str = "all",
    global_pruning: bool = False,
    round_to: int | None = None,
    max_rounds: int = 12,
    max_steps: int = 200,
    group_time_limit: float | None = GROUP_TIME_LIMIT,
    recover: str | None = None,
    recover_options: Mapping[str, Any] | None = None,
    **tp_kwargs: Any,
) -> tuple[nn.Module, PruneReport]:
    """Prune a copy of ``model`` and return ``(pruned_model, report)``; ``model`` and ``importance`` are left as
    they were. The pruned model carries its pruning record: ``save_pruned(path, pruned)`` writes it.

    Args:
        importance: a registry name, an ``Importance`` class or instance (data-driven ones need
            ``calibration_data``, or to be calibrated on ``model`` already).
        ratio: channel pruning ratio per group (local) or over all groups (``global_pruning=True``).
        speed_up: instead of ``ratio``, reach this MAC speed-up (Torch-Pruning's counter), by ``schedule``:
            ``"one-shot"`` (default) searches the smallest ratio whose one-shot prune reaches it (the criterion is
            measured once, on the unpruned model); ``"progressive"`` prunes ``step_ratio`` of the channels per
            step, re-measuring data-driven criteria on the pruned model before each step, until the target (at most
            ``max_steps`` steps).
        ratio_dict: per-layer ratios by layer name (Torch-Pruning's ``pruning_ratio_dict``), with ``ratio``.
        heads: ``"all"`` keeps the whole classifier, ``"last"`` only its last layer.
        ignored_layers: more layers to keep (the task heads are kept automatically).
        max_rounds: how many forward-breaking groups may be isolated before giving up.
        group_time_limit: seconds one group may take to form before it is kept unpruned (None: no limit).
        recover: repair the pruned model without training, on ``calibration_data``
            (:func:`~entropy_importance.recover`): ``"reconstruct"`` (layer-wise least squares), ``"bn"`` (BatchNorm
            statistics re-estimated), ``"reconstruct+bn"``, or None (default: the pruned model as Torch-Pruning leaves
            it). The report's ``recovery`` holds its seconds and per-layer errors.
        recover_options: more arguments of :func:`~entropy_importance.recover` (``positions``, ``ridge``, ...).
        tp_kwargs: passed to Torch-Pruning's pruner (``isomorphic``, ``unwrapped_parameters``, ...).

    Raises:
        ValueError / TypeError: bad arguments (nothing is copied or pruned).
        RuntimeError: the model could not be pruned within ``max_rounds`` / ``max_steps``, or its MACs cannot be
            counted for ``speed_up``.

    The criterion's own errors and the calibration data's (your loader's) are raised as they are.
    """
    if speed_up is not None and not (isinstance(speed_up, (int, float)) and math.isfinite(speed_up) and speed_up > 1):
        raise ValueError(f"speed_up must be a number > 1 (base MACs / pruned MACs), got {speed_up!r}")
    if schedule not in ("one-shot", "progressive"):
        raise ValueError(f"schedule must be 'one-shot' or 'progressive', got {schedule!r}")
    if not (isinstance(step_ratio, (int, float)) and 0 < step_ratio < 0.5):
        raise ValueError(f"step_ratio must be in (0, 0.5), got {step_ratio!r}")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    method = check_method(recover)
    if method is not None and calibration_data is None:
        raise ValueError(f"recover={recover!r} needs calibration_data= (batches of the model's inputs)")
    names = {n for n, _ in model.named_modules()}
    unknown = sorted(set(ratio_dict or {}) - names)
    if unknown:
        raise ValueError(f"ratio_dict names layers the model does not have: {unknown[:5]}")
    engine = Engine(model, example_inputs, importance, calibration_data=calibration_data,
                    calibration_batches=calibration_batches, ignored_layers=ignored_layers, heads=heads,
                    global_pruning=global_pruning, round_to=round_to, group_time_limit=group_time_limit,
                    max_rounds=max_rounds, **tp_kwargs)
    meta = {"criterion": type(engine.importance).__name__, "global_pruning": global_pruning}
    options = dict(recover_options or {})
    work, report = _pruned(engine, meta, ratio=ratio, speed_up=speed_up, schedule=schedule, step_ratio=step_ratio,
                           ratio_dict=ratio_dict, max_steps=max_steps, method=method, options=options)
    if method is not None and report.recovery is None:
        report.recovery = engine.recover(work, method, **options)
    return work, report


def _pruned(engine: Engine, meta: dict, *, ratio: float, speed_up: float | None, schedule: str, step_ratio: float,
            ratio_dict: Mapping[str, float] | None, max_steps: int, method: str | None, options: dict
            ) -> tuple[nn.Module, PruneReport]:
    """The engine's schedule for the target: one step at ``ratio``, a ratio search, or progressive steps (with
    ``method``, each step is recovered before the criterion is measured for the next; the report holds the last
    step's recovery)."""
    if speed_up is None:
        work, pruner = engine.one_shot(ratio, ratio_dict)
        return work, engine.finish(work, [pruner], 1, ratio, {**meta, "ratio": ratio})
    if schedule == "one-shot":
        found, work, pruner = engine.search_ratio(speed_up)
        return work, engine.finish(work, [pruner], 1, found, {**meta, "ratio": found, "speed_up": speed_up})
    if engine.macs_before is None:
        raise RuntimeError("speed_up needs MAC counts, which Torch-Pruning's counter cannot produce for this model; "
                           "use ratio= instead")
    engine.one_shot(0.5)  # finds the groups that break the model, so that the small steps skip them
    cap = 0.95
    steps = min(max_steps, math.ceil(cap / step_ratio))
    for step in engine.progressive(cap, math.ceil(cap / step_ratio), ratio_dict):
        recovery = engine.recover(step.model, method, step.pruner, **options) if method is not None else None
        if step.speed_up is not None and step.speed_up >= speed_up:
            meta.update(schedule="progressive", step_ratio=step_ratio, speed_up=speed_up)
            report = engine.finish(step.model, [step.pruner], step.index, None, meta)
            report.recovery = recovery
            return step.model, report
        if step.index >= steps:
            reached = "unknown" if step.speed_up is None else f"{step.speed_up:.2f}x"
            raise RuntimeError(f"speed-up {speed_up} not reached within {steps} steps of {step_ratio} "
                               f"(reached {reached}); raise max_steps or step_ratio")
    raise RuntimeError(f"speed-up {speed_up} not reached at ratio {cap}")
