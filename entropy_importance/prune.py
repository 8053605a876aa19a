"""``prune()``: prune any timm / torchvision model with automatic configuration.

What it configures so that the caller does not have to:

* task heads stay unpruned: timm ``get_classifier()``, torchvision ``fc`` / ``classifier`` / ``head``, and the
  detection heads of torchvision detectors (SSD/RetinaNet/FCOS ``head``; Faster/Mask R-CNN ``rpn.head``,
  ``roi_heads``);
* fused-qkv attention blocks get ``num_heads`` for Torch-Pruning and their ``head_dim`` / ``attn_dim`` fixed afterwards;
* groups whose pruning breaks the forward pass are found one by one, kept unpruned, and pruning is redone
  without them (``kept_unpruned`` in the report says which and why);
* a MAC speed-up target is reached by small progressive steps, re-calibrating data-driven criteria each step;
* splits, and concats whose input widths Torch-Pruning cannot infer, get exact widths, and groups are formed by a
  search that visits each channel once, and a layer's extra per-channel parameters (NF-Net ``gain``) are pruned with
  its weight (:mod:`.tp_compat`).

The caller's model is never modified: pruning runs on a deep copy, which is returned.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .calibration import CalibrationError, NotCalibratedError, StaleStatisticsError
from .counting import count_params, stage_widths, tp_macs
from .models import attention_num_heads, classifier_layers, sync_attention_heads
from .pruner import EntropyPruner, needs_refresh
from .registry import create_importance
from .tp_compat import (
    exact_widths,
    extra_parameters_follow,
    group_formation_time_limit,
    record_concat_widths,
    visit_each_index_once,
)

__all__ = ["prune", "PruneReport", "head_layers", "GROUP_TIME_LIMIT"]

#: seconds Torch-Pruning may take to form one group before ``prune()`` keeps that group unpruned (its default)
GROUP_TIME_LIMIT = 60.0


@dataclass
class PruneReport:
    """What :func:`prune` did. MACs are Torch-Pruning's counter (``tp.utils.count_ops_and_params``)."""

    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    kept_unpruned: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    rounds: int = 1

    @property
    def speed_up(self) -> float | None:
        if not self.macs_before or not self.macs_after:
            return None
        return self.macs_before / self.macs_after

    def __str__(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / self.params_before:.3f})"]
        if self.speed_up is not None:
            lines.append(f"MACs   {self.macs_before:,} -> {self.macs_after:,} (speed-up {self.speed_up:.2f}x)")
        lines.append(f"steps {self.steps}, isolation rounds {self.rounds}")
        for name, reason in self.kept_unpruned.items():
            lines.append(f"kept unpruned: {name or '<model>'}: {reason}")
        return "\n".join(lines)


def head_layers(model: nn.Module) -> dict[nn.Module, str]:
    """Task heads that must keep their output width, with the reason."""
    heads: dict[nn.Module, str] = {m: "classifier" for m in classifier_layers(model)}
    rpn = getattr(model, "rpn", None)
    if rpn is not None and isinstance(getattr(rpn, "head", None), nn.Module):
        heads[rpn.head] = "detection head (region proposal)"
    roi = getattr(model, "roi_heads", None)
    if isinstance(roi, nn.Module):
        heads[roi] = "detection head (RoI)"
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module) and (rpn is not None or hasattr(model, "anchor_generator")):
        heads[head] = "detection head"
    return heads


def _forward(model: nn.Module, x: Any):
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, (tuple, list)) and not isinstance(x, torch.Tensor):
            return model(*x)
        return model(x)


def _batch_size(x: Any) -> int | None:
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    if isinstance(x, (tuple, list)) and x:
        return _batch_size(x[0])
    if isinstance(x, dict) and x:
        return _batch_size(next(iter(x.values())))
    return None


def _signature(out: Any, batch: int | None) -> Any:
    """Structure of an output: containers, keys and tensor shapes (leading dim ignored unless it is the batch,
    so that a detector's variable number of boxes does not count as a change)."""
    if isinstance(out, torch.Tensor):
        shape = tuple(out.shape)
        return ("T", shape if shape[:1] == (batch,) else shape[1:])
    if isinstance(out, dict):
        return ("D", tuple((k, _signature(v, batch)) for k, v in out.items()))
    if isinstance(out, (list, tuple)):
        return ("L", type(out).__name__, len(out), tuple(_signature(v, batch) for v in out[:1]) if out else ())
    return ("O", type(out).__name__)


def _widths(model: nn.Module, x: Any) -> dict[str, int]:
    if not isinstance(x, torch.Tensor):
        return {}
    try:
        return stage_widths(model, x)
    except Exception:  # noqa: BLE001 - widths are informative only
        return {}


class _GroupFailure(Exception):
    """A group whose pruning fails; ``roots`` are its layers that could root it (out-channel conv/linear)."""

    def __init__(self, roots: list[str], reason: str, formation: bool = False) -> None:
        super().__init__(f"{roots[0]}: {reason}")
        self.roots, self.reason, self.formation = roots, reason, formation


class _BrokenSomewhere(Exception):
    """The forward pass fails (or changes structure) after a whole step; which group did it is not known yet."""


def _same_place_in_repeated_blocks(name: str, model: nn.Module) -> list[str]:
    """Layers of the same type at the same path with other block indices (``stages.3.blocks.1.attn.qkv`` ->
    ``stages.*.blocks.*.attn.qkv``): a group Torch-Pruning cannot form in one block it cannot form in the others."""
    modules = dict(model.named_modules())
    # every block index is a wildcard; a trailing index names the layer inside the block and stays
    pattern = re.compile(re.sub(r"\\\.\d+(?=\\\.)", r"\\.\\d+", re.escape(name)) + "$")
    return [n for n, m in modules.items() if n != name and pattern.match(n) and type(m) is type(modules[name])]


def _group_roots(group, names: dict[nn.Module, str], dg) -> list[str]:
    roots = [names.get(group[0].dep.target.module, "?")]
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and dg.is_out_channel_pruning_fn(dep.handler):
            name = names.get(module)
            if name is not None and name not in roots:
                roots.append(name)
    return roots


def _formation_failure(e: BaseException, model: nn.Module) -> _GroupFailure | None:
    """If Torch-Pruning raised while forming a group, that group's failure, rooted at ``get_pruning_group``'s
    ``module`` (read from the traceback) when it is a layer of ``model``."""
    tb, module = e.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "get_pruning_group":
            module = tb.tb_frame.f_locals.get("module", module)
        tb = tb.tb_next
    root = next((n for n, m in model.named_modules() if m is module), None) if module is not None else None
    return None if root is None else _GroupFailure([root], f"Torch-Pruning cannot form this group ({_short(e)})", True)


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text[:160]


def _validate(ratio: float, speed_up: float | None, importance, calibration_data, tp_kwargs: dict) -> None:
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if speed_up is not None and not (isinstance(speed_up, (int, float)) and math.isfinite(speed_up) and speed_up > 1):
        raise ValueError(f"speed_up must be a number > 1 (base MACs / pruned MACs), got {speed_up!r}")
    if calibration_data is None and needs_refresh(importance):
        raise ValueError(f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)")
    for key in ("pruning_ratio", "iterative_steps", "ignored_layers", "num_heads", "importance"):
        if key in tp_kwargs:
            raise TypeError(f"prune() sets {key!r} itself; use ratio=/speed_up=/ignored_layers= instead")


@exact_widths()
@visit_each_index_once()
@extra_parameters_follow()
def prune(
    model: nn.Module,
    example_inputs: Any,
    importance: Any = "channel-similarity-entropy",
    *,
    ratio: float = 0.5,
    speed_up: float | None = None,
    calibration_data: Iterable | None = None,
    calibration_batches: int | None = None,
    ignored_layers: Iterable[nn.Module] | None = None,
    global_pruning: bool = False,
    round_to: int | None = None,
    max_rounds: int = 12,
    max_steps: int = 200,
    group_time_limit: float | None = GROUP_TIME_LIMIT,
    **tp_kwargs: Any,
) -> tuple[nn.Module, PruneReport]:
    """Prune a copy of ``model`` and return ``(pruned_model, report)``; ``model`` itself is left unchanged.

    Args:
        importance: a registry name, an ``Importance`` class or instance (data-driven ones need
            ``calibration_data``; they are re-calibrated on the model being pruned before every step).
        ratio: channel pruning ratio per group (local) or over all groups (``global_pruning=True``).
        speed_up: instead of ``ratio``, prune in small steps until Torch-Pruning's MAC count drops by this factor.
        ignored_layers: more layers to keep (the task heads are kept automatically).
        max_rounds: how many forward-breaking groups may be isolated before giving up.
        group_time_limit: seconds Torch-Pruning may take to form one group before that group is kept unpruned
            (None: no limit); see :func:`.tp_compat.group_formation_time_limit`.
        tp_kwargs: passed to Torch-Pruning's pruner (``round_to``, ``isomorphic``, ``unwrapped_parameters``, ...).

    Raises:
        ValueError / TypeError: bad arguments (nothing is pruned).
        RuntimeError: the model could not be pruned within ``max_rounds`` / ``max_steps``.
    """
    importance = create_importance(importance)
    _validate(ratio, speed_up, importance, calibration_data, tp_kwargs)
    if group_time_limit is not None and not (isinstance(group_time_limit, (int, float)) and group_time_limit > 0):
        raise ValueError(f"group_time_limit must be a number of seconds > 0 or None, got {group_time_limit!r}")
    names = {m: n for n, m in model.named_modules()}
    keep: dict[str, str] = {names[m]: reason for m, reason in head_layers(model).items() if m in names}
    for m in ignored_layers or ():
        if m not in names:
            raise ValueError(f"ignored layer {type(m).__name__} is not a module of the model")
        keep.setdefault(names[m], "ignored by the caller")

    base = copy.deepcopy(model).eval()
    batch = _batch_size(example_inputs)
    reference = _signature(_forward(base, example_inputs), batch)
    report = PruneReport(count_params(base), 0, tp_macs(base, example_inputs), None,
                         widths_before=_widths(base, example_inputs))
    common = dict(global_pruning=global_pruning, round_to=round_to, calibration_data=calibration_data,
                  calibration_batches=calibration_batches, **tp_kwargs)

    def attempt(pruning_ratio: float, steps: int, check: str | None) -> tuple[nn.Module, EntropyPruner]:
        """A fresh copy and pruner; with ``check`` ("each"/"end" group), its first step is taken and checked."""
        work = copy.deepcopy(model).eval()
        modules = dict(work.named_modules())
        ignored = [modules[n] for n in keep if n in modules]
        limit = group_formation_time_limit(group_time_limit if check else None)
        with warnings.catch_warnings(), limit:
            warnings.simplefilter("ignore")
            try:
                with record_concat_widths():
                    pruner = EntropyPruner(work, example_inputs, importance, pruning_ratio=pruning_ratio,
                                           iterative_steps=steps, ignored_layers=ignored,
                                           num_heads=attention_num_heads(work), **common)
            except Exception as e:  # noqa: BLE001 - a group that Torch-Pruning cannot even form fails on its root
                formation = _formation_failure(e, work)
                if formation is None:
                    raise
                raise formation from None
            if check:
                _step_checked(pruner, work, each_group=check == "each")
        return work, pruner

    def _step_checked(pruner: EntropyPruner, work: nn.Module, each_group: bool) -> None:
        work_names = {m: n for n, m in work.named_modules()}
        scored = {"roots": None}
        estimate = pruner.estimate_importance

        def tracking_estimate(group):  # remembers which group Torch-Pruning is working on
            scored["roots"] = _group_roots(group, work_names, pruner.DG)
            return estimate(group)

        pruner.estimate_importance = tracking_estimate
        groups = pruner.step(interactive=True)
        while True:
            try:
                group = next(groups)
            except StopIteration:
                break
            except Exception as e:  # noqa: BLE001 - Torch-Pruning failed on the group it was forming or scoring
                formation = _formation_failure(e, work)
                if formation is not None:
                    raise formation from None
                if scored["roots"] is None:
                    raise
                raise _GroupFailure(scored["roots"], f"Torch-Pruning cannot prune this group ({_short(e)})") from None
            roots = _group_roots(group, work_names, pruner.DG)
            try:
                group.prune()
                if not each_group:
                    continue
                sig = output_signature(work)
            except Exception as e:  # noqa: BLE001 - any failure of this group isolates it
                raise _GroupFailure(roots, f"pruning breaks the forward pass ({_short(e)})") from None
            if sig != reference:
                raise _GroupFailure(roots, "pruning changes the output structure")
        if not each_group:
            try:
                sig = output_signature(work)
            except Exception:  # noqa: BLE001 - some group broke the model; the checked pass finds which
                raise _BrokenSomewhere from None
            if sig != reference:
                raise _BrokenSomewhere

    def output_signature(work: nn.Module) -> Any:
        sync_attention_heads(work)
        return _signature(_forward(work, example_inputs), batch)

    # 1) find the groups that cannot be pruned: a step at the target ratio (or 0.5 for speed-up). The first try
    # checks the forward pass once, after every group is pruned; once something broke, each group is checked
    # right after it is pruned, so that the failure has a name (one forward per group: the expensive mode)
    probe_ratio = ratio if speed_up is None else 0.5
    rounds, check = 1, "end"
    while True:
        try:
            work, pruner = attempt(probe_ratio, 1, check)
            break
        except _BrokenSomewhere:
            check = "each"
        except _GroupFailure as failure:
            new = [r for r in failure.roots if r not in keep]
            if not new:
                raise RuntimeError(f"could not prune: {failure}") from None
            if rounds >= max_rounds:
                raise RuntimeError(f"gave up after isolating {max_rounds} groups that break the model; "
                                   f"kept: {keep}") from None
            rounds += 1
            # first time: keep the group's root; if it comes back re-rooted, keep every layer that could root it
            added = new[:1] if failure.roots[0] not in keep else new
            for name in added:
                keep[name] = failure.reason if name == failure.roots[0] else f"in the group of {failure.roots[0]}"
            # the same layer of a repeated block: a group Torch-Pruning cannot form, or a second failure at the
            # same place, keeps that layer in every copy of the block in one round instead of one round per copy
            for name in added:
                copies = _same_place_in_repeated_blocks(name, model)
                if failure.formation or any(other in keep for other in copies):
                    for other in copies:
                        keep.setdefault(other, f"like {name}: {keep[name]}")
        except (CalibrationError, NotCalibratedError, StaleStatisticsError):
            raise  # the caller's data or importance is at fault, not the model
        except Exception as e:  # noqa: BLE001 - e.g. the dependency graph itself cannot be built
            raise RuntimeError(f"Torch-Pruning cannot prune this model: {_short(e)}") from e
    report.rounds, report.steps = rounds, 1

    # 2) speed-up target: progressive small steps on a fresh copy, without the isolated groups
    if speed_up is not None:
        if report.macs_before is None:
            raise RuntimeError("speed_up needs MAC counts, which Torch-Pruning's counter cannot produce for "
                               "this model; use ratio= instead")
        work, pruner = attempt(0.95 if global_pruning else 0.9, max_steps, check=None)
        for step in range(1, max_steps + 1):
            pruner.step()
            sync_attention_heads(work)
            macs = tp_macs(work, example_inputs)
            report.steps = step
            if macs is not None and report.macs_before / macs >= speed_up:
                break
        else:
            raise RuntimeError(f"speed-up {speed_up} not reached within {max_steps} steps "
                               f"(reached {report.macs_before / macs:.2f}x)")
        if _signature(_forward(work, example_inputs), batch) != reference:
            raise RuntimeError("progressive pruning changed the output structure")

    report.params_after = count_params(work)
    report.macs_after = tp_macs(work, example_inputs)
    report.widths_after = _widths(work, example_inputs)
    report.kept_unpruned = keep
    return work, report
