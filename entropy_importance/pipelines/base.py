"""What every pipeline shares: stages, the report, the context that runs engine steps, checkpoints and resume.

A pipeline is a schedule of engine steps (:class:`~entropy_importance.Engine`) on a copy of the caller's model: each
stage prunes, then the caller's ``finetune(model, stage)`` and ``evaluate(model)`` run, and the stage is recorded
(what was pruned, params and MACs after, the metric, seconds) and checkpointed, so that ``resume=`` continues an
interrupted run to the same result.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..calibration.refresh import reusable_batches
from ..criteria.registry import create_importance
from ..engine import Engine, count_params, task_heads, tp_macs
from ..recovery import check_method, recover
from ..repairs import GROUP_TIME_LIMIT
from ..serialization import atomic_write, load_pruned, save_pruned

__all__ = ["Stage", "StageReport", "PipelineReport", "Pipeline", "PipelineContext", "prunable_layers",
           "resolve_ratios", "ratio_keeping", "layer_widths"]

_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Stage:
    """What just happened, as ``finetune(model, stage)`` sees it.

    Attributes:
        index: 0, 1, ... in the order the stages ran.
        kind: ``"layer"`` (one layer pruned), ``"round"`` (an iteration over all layers), ``"step"`` (one step of a
            phase), ``"one-shot"`` (everything at once) or ``"final"`` (after the last pruning stage).
        name: the layer, ``"round 2"``, ``"global 3"``, ...
        phase: the phase of a two-phase pipeline (``"global"``, ``"layer-wise"``), else None.
    """

    index: int
    kind: str
    name: str
    phase: str | None = None


@dataclass
class StageReport:
    """One stage: what was pruned (channels removed per layer), params and MACs after, the metric, seconds, and the
    recovery after the pruning (:meth:`~entropy_importance.recovery.RecoveryReport.summary`), if any."""

    stage: Stage
    pruned: dict[str, int]
    params: int
    macs: int | None
    metric: float | None
    seconds: float
    recovery: dict | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "stage": asdict(self.stage)}

    @classmethod
    def from_dict(cls, d: dict) -> StageReport:
        return cls(Stage(**d["stage"]), dict(d["pruned"]), d["params"], d["macs"], d["metric"], d["seconds"],
                   d.get("recovery"))


@dataclass
class PipelineReport:
    """Every stage of a pipeline run, and the model before it. Serialises with :meth:`to_json`."""

    pipeline: str
    options: dict
    params_before: int
    macs_before: int | None
    metric_before: float | None
    stages: list[StageReport] = field(default_factory=list)
    #: every conv / linear layer's output width before the run (layer-wise targets are fractions of these)
    widths_before: dict[str, int] = field(default_factory=dict)

    @property
    def params_after(self) -> int:
        return self.stages[-1].params if self.stages else self.params_before

    @property
    def macs_after(self) -> int | None:
        return self.stages[-1].macs if self.stages else self.macs_before

    @property
    def speed_up(self) -> float | None:
        after = self.macs_after
        return self.macs_before / after if self.macs_before and after else None

    def to_dict(self) -> dict:
        return {"pipeline": self.pipeline, "options": self.options, "params_before": self.params_before,
                "macs_before": self.macs_before, "metric_before": self.metric_before,
                "params_after": self.params_after, "macs_after": self.macs_after, "speed_up": self.speed_up,
                "stages": [s.to_dict() for s in self.stages], "widths_before": self.widths_before}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> PipelineReport:
        return cls(d["pipeline"], d["options"], d["params_before"], d["macs_before"], d["metric_before"],
                   [StageReport.from_dict(s) for s in d["stages"]], dict(d.get("widths_before", {})))

    def __str__(self) -> str:
        lines = [f"{self.pipeline}: params {self.params_before:,} -> {self.params_after:,}"
                 + (f", MAC speed-up {self.speed_up:.2f}x" if self.speed_up else "")]
        for s in self.stages:
            metric = "" if s.metric is None else f", metric {s.metric:.4g}"
            lines.append(f"  {s.stage.index:3d} {s.stage.kind:8s} {s.stage.name:28s} -{sum(s.pruned.values()):5d} ch, "
                         f"params {s.params:,}{metric}, {s.seconds:.1f} s")
        return "\n".join(lines)


def prunable_layers(model: nn.Module, heads: str = "all", ignored: Iterable[str] = ()) -> list[str]:
    """Names of the conv / linear layers outside the task heads, in the order ``named_modules`` lists them (the
    network's definition order, which is its forward order for sequential models)."""
    skip = {m for head in task_heads(model, last_only=heads == "last") for m in head.modules()}
    ignored = set(ignored)
    return [n for n, m in model.named_modules() if isinstance(m, _LAYERS) and m not in skip and n not in ignored]


def resolve_ratios(model: nn.Module, table: Mapping[str, float], layers: Iterable[str] | None = None
                   ) -> dict[str, float]:
    """``{layer name: ratio}`` from a table keyed by layer names or shell-style patterns (``"features.*"``); a later
    key overrides an earlier one for the layers both match.

    Raises:
        ValueError: a key that matches no layer, or a ratio outside [0, 1).
    """
    names = list(layers) if layers is not None else [n for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    resolved: dict[str, float] = {}
    for key, ratio in table.items():
        if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0):
            raise ValueError(f"ratio of {key!r} must be in [0, 1), got {ratio!r}")
        matched = [n for n in names if n == key or fnmatch.fnmatchcase(n, key)]
        if not matched:
            raise ValueError(f"ratio table key {key!r} matches no prunable layer of the model "
                             f"(first ones: {names[:4]})")
        resolved.update({n: float(ratio) for n in matched})
    return resolved


def ratio_keeping(width: int, keep: int) -> float:
    """The local pruning ratio with which Torch-Pruning keeps exactly ``keep`` of ``width`` channels (it keeps
    ``int(width * (1 - ratio))``; the half channel guards against rounding of ``1 - keep / width``)."""
    if not 1 <= keep <= width:
        raise ValueError(f"cannot keep {keep} of {width} channels")
    return 1.0 - (keep + 0.5) / width if keep < width else 0.0


def layer_widths(model: nn.Module) -> dict[str, int]:
    """``{layer name: output channels / features}`` of every conv and linear layer."""
    return {n: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for n, m in model.named_modules() if isinstance(m, _LAYERS)}


class PipelineContext:
    """The state of one pipeline run: the model being pruned (a copy of the caller's), the report, and the stages
    already done when resuming. Pipelines call :meth:`prune` inside :meth:`stage`."""

    def __init__(self, pipeline: Pipeline, model: nn.Module, example_inputs: Any, calibration_data, calibration_batches,
                 finetune, evaluate, checkpoint: Path | None, done: PipelineReport | None,
                 recover: str | None = None, recover_options: Mapping[str, Any] | None = None) -> None:
        self.pipeline, self.model, self.example_inputs = pipeline, model, example_inputs
        self.recover, self.recover_options = recover, dict(recover_options or {})
        self.calibration_data, self.calibration_batches = calibration_data, calibration_batches
        self.finetune, self.evaluate = finetune, evaluate
        self.checkpoint = checkpoint
        self.done = done.stages if done is not None else []
        self._index = 0
        self.report: PipelineReport | None = done

    def engine(self, **options: Any) -> Engine:
        """An engine on the current model with the pipeline's criterion and settings (``options`` override)."""
        p = self.pipeline
        kwargs = dict(calibration_data=self.calibration_data, calibration_batches=self.calibration_batches,
                      heads=p.heads, global_pruning=False, round_to=p.round_to, group_time_limit=p.group_time_limit)
        kwargs.update(options)
        return Engine(self.model, self.example_inputs, p.importance, **kwargs)

    def prune(self, ratio: float = 0.0, ratio_dict: Mapping[str, float] | None = None, **options: Any) -> None:
        """One one-shot engine step on the current model (``ratio`` for every group, ``ratio_dict`` per layer)."""
        engine = self.engine(**options)
        work, pruner = engine.one_shot(ratio, ratio_dict)
        engine.finish(work, [pruner], 1, ratio, {"pipeline": self.pipeline.name})
        self.model = work

    def prune_to_speed_up(self, speed_up: float, **options: Any) -> None:
        """One one-shot engine step at the smallest uniform ratio that makes the current model ``speed_up`` times
        cheaper in MACs (:meth:`~entropy_importance.Engine.search_ratio`)."""
        engine = self.engine(**options)
        ratio, work, pruner = engine.search_ratio(speed_up)
        engine.finish(work, [pruner], 1, ratio, {"pipeline": self.pipeline.name})
        self.model = work

    def measure_metric(self) -> float | None:
        if self.evaluate is None:
            return None
        value = self.evaluate(self.model)
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"evaluate() returned {value}: it must return a finite number (e.g. accuracy)")
        return value

    def stage(self, kind: str, name: str, action: Callable[[], None] | None, phase: str | None = None
              ) -> StageReport:
        """Run one stage: ``action`` (pruning), then the caller's ``finetune`` and ``evaluate``; record and
        checkpoint it. When resuming, a stage already done is not run again: its record is returned."""
        index = self._index
        self._index += 1
        if index < len(self.done):
            return self.done[index]
        stage = Stage(index, kind, name, phase)
        t = time.perf_counter()
        previous = self.model
        before = layer_widths(self.model)
        if action is not None:
            action()
        after = layer_widths(self.model)
        pruned = {n: before[n] - after.get(n, 0) for n in before if before[n] != after.get(n, 0)}
        recovery = None
        if self.recover is not None and pruned and self.model is not previous:
            _, repaired = recover(previous, self.model, self.calibration_data, self.recover, inplace=True,
                              calibration_batches=self.calibration_batches, **self.recover_options)
            recovery = repaired.summary()
        if self.finetune is not None:
            self.finetune(self.model, stage)
        record = StageReport(stage, pruned, count_params(self.model), tp_macs(self.model, self.example_inputs),
                             self.measure_metric(), time.perf_counter() - t, recovery)
        self.report.stages.append(record)
        self._save()
        return record

    def _save(self) -> None:
        if self.checkpoint is None:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return  # under DistributedDataParallel every process runs the pipeline alike; rank 0 writes
        save_pruned(self.checkpoint, self.model, {"pipeline_report": self.report.to_json(indent=None)})


class Pipeline:
    """Base of the papers' procedures. Subclasses set :attr:`name` and :attr:`default_importance` and implement
    :meth:`_run` (the stages); :meth:`run` is the one call shape for all of them.

    Args:
        importance: a registry name, an ``Importance`` class or instance (default: the paper's criterion).
        heads: ``"all"`` keeps the whole classifier, ``"last"`` only its last layer.
        round_to: channel counts multiples of this.
        group_time_limit: seconds one Torch-Pruning group may take to form (see :func:`~entropy_importance.repairs`).
    """

    name = "pipeline"
    default_importance = "channel-similarity-entropy"

    def __init__(self, importance: Any = None, *, heads: str = "all", round_to: int | None = None,
                 group_time_limit: float | None = GROUP_TIME_LIMIT) -> None:
        self.importance = create_importance(importance if importance is not None else self.default_importance)
        if heads not in ("all", "last"):
            raise ValueError(f"heads must be 'all' or 'last', got {heads!r}")
        self.heads, self.round_to, self.group_time_limit = heads, round_to, group_time_limit

    def options(self) -> dict:
        """The settings of this pipeline, JSON-able (recorded in the report)."""
        return {k: v for k, v in vars(self).items() if k != "importance" and not k.startswith("_")} | {
            "importance": type(self.importance).__name__}

    def run(self, model: nn.Module, example_inputs: Any, *, calibration_data: Iterable | None = None,
            calibration_batches: int | None = None, finetune: Callable[[nn.Module, Stage], Any] | None = None,
            evaluate: Callable[[nn.Module], float] | None = None, ratio: float | None = None,
            ratios: Mapping[str, float] | None = None, speed_up: float | None = None,
            checkpoint: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
            report_path: str | os.PathLike | None = None, recover: str | None = "auto",
            recover_options: Mapping[str, Any] | None = None) -> tuple[nn.Module, PipelineReport]:
        """Run the procedure on a copy of ``model``; returns ``(pruned_model, report)``.

        Args:
            finetune: ``finetune(model, stage)``, yours (the library owns no training loop); called after each stage.
            evaluate: ``evaluate(model) -> float`` (e.g. accuracy), after each stage.
            ratio / ratios / speed_up: the target, as the pipeline reads it (a uniform ratio, a per-layer table by
                layer name or glob pattern, a MAC speed-up).
            checkpoint: write the model and the report here after every stage (``save_pruned`` format; under
                ``torch.distributed`` only rank 0 writes).
            resume: continue from such a checkpoint (the stages it holds are not run again).
            report_path: write the final report as JSON here.
            recover: after every pruning stage, before ``finetune``, repair the model without training
                (:func:`~entropy_importance.recover` on ``calibration_data``, against the model before the stage):
                ``"reconstruct"``, ``"bn"``, ``"reconstruct+bn"`` or None; ``"auto"`` (default) is ``"reconstruct"``
                when ``calibration_data`` is given, else None. Measured on a ResNet trained on Fashion-MNIST
                (91.5 %), luo-wu / efp to 2x MACs with no fine-tune: 10.2 / 10.1 % test accuracy without recovery,
                57.3 / 64.2 % with ``"bn"``, 89.4 / 89.9 % with ``"reconstruct"`` (docs/pipelines.md). The stage
                report records it.
            recover_options: more arguments of :func:`~entropy_importance.recover`.

        Raises:
            ValueError: bad arguments (a ratio table naming layers the model lacks, ratios outside [0, 1), a NaN
                metric); RuntimeError: a target that cannot be reached. The caller's model is never modified, and
                errors of ``finetune`` / ``evaluate`` propagate as they are.
        """
        if ratio is not None and not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
            raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
        if speed_up is not None and not (isinstance(speed_up, (int, float)) and speed_up > 1):
            raise ValueError(f"speed_up must be a number > 1, got {speed_up!r}")
        if recover == "auto":
            recover = "reconstruct" if calibration_data is not None else None
        method = check_method(recover)
        if method is not None and calibration_data is None:
            raise ValueError(f"recover={recover!r} needs calibration_data= (batches of the model's inputs)")
        if ratios is not None:
            resolve_ratios(model, ratios, prunable_layers(model, self.heads))
        target = {"ratio": ratio, "ratios": dict(ratios) if ratios else None, "speed_up": speed_up}
        self._check_target(model, **target)
        calibration_data = reusable_batches(calibration_data, calibration_batches)
        done = None
        if resume is not None and Path(resume).exists():
            payload = torch.load(resume, map_location="cpu", weights_only=True)
            done = PipelineReport.from_dict(json.loads(payload["meta"]["pipeline_report"]))
            if done.pipeline != self.name:
                raise ValueError(f"{resume} is a checkpoint of pipeline {done.pipeline!r}, not {self.name!r}")
            work = load_pruned(resume, base_model=model)
        else:
            work = copy.deepcopy(model).eval()
        ctx = PipelineContext(self, work, example_inputs, calibration_data, calibration_batches, finetune, evaluate,
                              Path(checkpoint or resume) if (checkpoint or resume) else None, done, method,
                              recover_options)
        if done is None:
            ctx.report = PipelineReport(self.name, {**self.options(), **target}, count_params(work),
                                        tp_macs(work, example_inputs), ctx.measure_metric(),
                                        widths_before=layer_widths(work))
        self._run(ctx, **target)
        if report_path is not None:
            text = ctx.report.to_json()
            atomic_write(report_path, lambda f: f.write(text.encode()))
        return ctx.model, ctx.report

    def _check_target(self, model: nn.Module, ratio, ratios, speed_up) -> None:
        """Raise ValueError for a target the pipeline does not take."""

    def _run(self, ctx: PipelineContext, ratio, ratios, speed_up) -> None:
        raise NotImplementedError
