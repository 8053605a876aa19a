"""The one pruning engine under ``prune()``, the CLI, the benchmarks and the pipelines.

An :class:`Engine` holds a copy of the caller's model (never modified), the layers to keep (task heads, the
caller's, and the groups found to break the model), the criterion and its calibration data. Each schedule is a
sequence of engine steps on a fresh copy:

* :meth:`Engine.one_shot`: one step at a ratio (or a per-layer ratio table), isolating breaking groups;
* :meth:`Engine.search_ratio`: the smallest ratio whose one-shot step reaches a MAC speed-up;
* :meth:`Engine.progressive`: many small steps, the criterion re-measured before each.

Data-driven criteria of this package are calibrated once per distinct model: every fresh copy of the base shares
the base's statistics (:meth:`~entropy_importance.DataDrivenImportance.bind`); Torch-Pruning's Taylor and activation
criteria are refreshed on each copy. Everything Torch-Pruning does runs inside :func:`~entropy_importance.repairs`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..calibration.errors import CalibrationError, NotCalibratedError, StaleStatisticsError
from ..calibration.observe import DataDrivenImportance
from ..calibration.refresh import refresh_importance, requirements, reusable_batches
from ..criteria.registry import create_importance
from ..messages import first_line
from ..models import build_spec
from ..recovery import RecoveryReport, recover
from ..repairs import GROUP_TIME_LIMIT, GroupFormationTimeout, repairs
from ..repairs.memory_format import guard_strided_1x1_convs, memory_format_of, restore_memory_format
from ..serialization import PruningRecord, attach_record, describe_inputs, pruning_record, state_signature
from .attention import attention_num_heads, sync_attention_heads
from .counting import count_params, measured_forward
from .heads import task_heads
from .outputs import batch_size, forward, output_signature
from .pruner import EntropyPruner

__all__ = ["Engine", "PruneReport", "EngineStep"]

_SET_BY_ENGINE = ("pruning_ratio", "iterative_steps", "ignored_layers", "num_heads", "importance",
                  "pruning_ratio_dict", "global_pruning", "round_to")


@dataclass
class PruneReport:
    """What the engine did. MACs are Torch-Pruning's counter (``tp.utils.count_ops_and_params``).

    ``kept_unpruned`` maps each layer left at its full width to why: the layers the engine keeps (task heads, the
    caller's ``ignored_layers``, groups found to break the model) and every group the pruning step left whole, by
    its root layer (coupled with a kept layer, not scored by the criterion, at one channel already, or a group
    Torch-Pruning's index mapping would empty). Every other group is pruned, to at least one channel (one per
    channel group of a grouped layer): where a ratio keeps ``int(C * (1 - ratio))`` = 0 of a group's ``C``
    channels, one is kept (Torch-Pruning 1.6 alone leaves such a group whole, so that a higher ratio could give a
    lower speed-up).
    """

    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    widths_before: dict[str, int] = field(default_factory=dict)
    widths_after: dict[str, int] = field(default_factory=dict)
    kept_unpruned: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    rounds: int = 1
    ratio: float | None = None
    #: the recovery step after pruning (``prune(recover=...)``), with its seconds and per-layer evidence
    recovery: RecoveryReport | None = None

    @property
    def speed_up(self) -> float | None:
        if not self.macs_before or not self.macs_after:
            return None
        return self.macs_before / self.macs_after

    def to_dict(self) -> dict:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "speed_up": self.speed_up,
                "widths_before": self.widths_before, "widths_after": self.widths_after,
                "kept_unpruned": self.kept_unpruned, "steps": self.steps, "rounds": self.rounds, "ratio": self.ratio,
                "recovery": None if self.recovery is None else self.recovery.to_dict()}

    def __str__(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / self.params_before:.3f})"]
        if self.speed_up is not None:
            lines.append(f"MACs   {self.macs_before:,} -> {self.macs_after:,} (speed-up {self.speed_up:.2f}x)")
        ratio = "" if self.ratio is None else f", ratio {self.ratio:.4f}"
        lines.append(f"steps {self.steps}, isolation rounds {self.rounds}{ratio}")
        for name, reason in self.kept_unpruned.items():
            lines.append(f"kept unpruned: {name or '<model>'}: {reason}")
        if self.recovery is not None:
            lines.append(str(self.recovery).splitlines()[0])
        return "\n".join(lines)


@dataclass
class EngineStep:
    """One step of :meth:`Engine.progressive`: the model after it (the same object every step) and its MACs."""

    index: int
    model: nn.Module
    pruner: EntropyPruner
    macs: int | None
    speed_up: float | None


class _GroupFailure(Exception):
    """A group whose pruning fails; ``roots`` are its layers that could root it (out-channel conv/linear)."""

    def __init__(self, roots: list[str], reason: str, formation: bool = False) -> None:
        super().__init__(f"{roots[0]}: {reason}")
        self.roots, self.reason, self.formation = roots, reason, formation


class _BrokenSomewhere(Exception):
    """The forward pass fails (or changes structure) after a whole step; which group did it is not known yet."""


class _CriterionFailure(Exception):
    """The criterion itself raised while scoring a group: re-raised to the caller as it was."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _same_place_in_repeated_blocks(name: str, modules: Mapping[str, nn.Module]) -> list[str]:
    """Layers of the same type at the same path with other block indices (``stages.3.blocks.1.attn.qkv`` ->
    ``stages.*.blocks.*.attn.qkv``): a group Torch-Pruning cannot form in one block it cannot form in the others."""
    # every block index is a wildcard; a trailing index names the layer inside the block and stays
    pattern = re.compile(re.sub(r"\\\.\d+(?=\\\.)", r"\\.\\d+", re.escape(name)) + "$")
    return [n for n, m in modules.items() if n != name and pattern.match(n) and type(m) is type(modules[name])]


def _group_roots(group, names: dict[nn.Module, str], graph) -> list[str]:
    roots = [names.get(group[0].dep.target.module, "?")]
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and graph.is_out_channel_pruning_fn(dep.handler):
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
    if root is None:
        return None
    return _GroupFailure([root], f"Torch-Pruning cannot form this group ({first_line(e, 160, with_type=True)})", True)


def _check_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p.detach().sum()) and not torch.isfinite(p.detach()).all():
            raise ValueError(f"parameter {name!r} has NaN or Inf values: channels cannot be ranked on non-finite "
                             "weights; check the checkpoint or the training run that produced it")


def _shapes(model: nn.Module) -> tuple:
    """The parameter shapes of ``model``: what its MACs and widths depend on (its weights' values do not count)."""
    return tuple(tuple(p.shape) for p in model.parameters())


def _keep_only(probes: dict[float, tuple], best: float) -> None:
    """Drop the models of every probe but ``best`` (only the best probe so far needs its model)."""
    for other in probes:
        if other != best:
            probes[other] = (probes[other][0], None, None)


class Engine:
    """Prunes copies of ``model`` with automatic configuration; the caller's model and importance are never modified.

    What it configures so that the caller does not have to: task heads stay unpruned (:func:`.task_heads`),
    fused-qkv attention blocks get ``num_heads`` and their ``head_dim`` synced afterwards, groups whose pruning
    breaks the forward pass (or that Torch-Pruning cannot form within ``group_time_limit``) are found, kept
    unpruned and pruning redone without them, data-driven criteria are measured on the model being pruned, and
    Torch-Pruning runs inside :func:`~entropy_importance.repairs`.

    Args:
        importance: a registry name, an ``Importance`` class or instance (an instance is copied: yours keeps its
            state; data-driven ones need ``calibration_data`` unless already calibrated on ``model``).
        calibration_data: an iterable of batches (re-iterable; a one-shot iterator is read once, up to
            ``calibration_batches`` batches, and kept).
        heads: ``"all"`` keeps the whole classifier, ``"last"`` only its last layer (VGG's hidden FC layers are then
            pruned); detection heads are always kept.
        ignored_layers: more layers to keep.
        max_rounds: how many forward-breaking groups may be isolated before giving up.
        tp_kwargs: passed to Torch-Pruning's pruner (``isomorphic``, ``unwrapped_parameters``, ...).

    Raises:
        ValueError / TypeError: bad arguments, before anything is copied.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Any = "channel-similarity-entropy",
        *,
        calibration_data: Iterable | None = None,
        calibration_batches: int | None = None,
        ignored_layers: Iterable[nn.Module] | None = None,
        heads: str = "all",
        global_pruning: bool = False,
        round_to: int | None = None,
        group_time_limit: float | None = GROUP_TIME_LIMIT,
        max_rounds: int = 12,
        **tp_kwargs: Any,
    ) -> None:
        importance = create_importance(importance)
        for key in _SET_BY_ENGINE:
            if key in tp_kwargs:
                raise TypeError(f"the engine sets {key!r} itself; use ratio= / speed_up= / ignored_layers= / "
                                "global_pruning= / round_to= instead")
        if group_time_limit is not None and not (isinstance(group_time_limit, (int, float)) and group_time_limit > 0):
            raise ValueError(f"group_time_limit must be a number of seconds > 0 or None, got {group_time_limit!r}")
        if not (isinstance(max_rounds, int) and max_rounds >= 1):
            raise ValueError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
        if round_to is not None and not (isinstance(round_to, int) and round_to >= 1):
            raise ValueError(f"round_to must be a positive integer or None, got {round_to!r}")
        if heads not in ("all", "last"):
            raise ValueError(f"heads must be 'all' or 'last', got {heads!r}")
        needs = requirements(importance)
        if needs.data and calibration_data is None and not getattr(importance, "calibrated", False):
            raise ValueError(f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)")
        names = {m: n for n, m in model.named_modules()}
        keep = {names[m]: reason for m, reason in task_heads(model, last_only=heads == "last").items() if m in names}
        for m in ignored_layers or ():
            if m not in names:
                raise ValueError(f"ignored layer {type(m).__name__} is not a module of the model")
            keep.setdefault(names[m], "ignored by the caller")
        _check_finite(model)
        self.calibration_data = reusable_batches(calibration_data, calibration_batches)
        self.calibration_batches = calibration_batches
        self.example_inputs = example_inputs
        self.global_pruning, self.round_to = global_pruning, round_to
        self.group_time_limit, self.max_rounds, self.tp_kwargs = group_time_limit, max_rounds, tp_kwargs
        self.keep: dict[str, str] = keep
        self.rounds = 1
        self._record = pruning_record(model)
        self._inputs = describe_inputs(example_inputs)

        self.base = copy.deepcopy(model).eval()
        self.memory_format = memory_format_of(model)  # pruned weights are put back in it (Torch-Pruning drops it)
        self.importance = copy.deepcopy(importance)  # the caller's instance keeps its state
        self._base_measured = False
        if isinstance(self.importance, DataDrivenImportance) and self.importance.calibrated \
                and self.calibration_data is None:
            self.importance.bind(self.base)  # calibrated on the caller's model, of which the base is a copy
            self._base_measured = True
        self._batch = batch_size(example_inputs)
        #: MACs and widths of the models checked by this engine (one forward pass gives the output structure, the
        #: MACs and the widths), with the parameter shapes they were measured at
        self._measured: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, int | None, dict[str, int]]] = \
            weakref.WeakKeyDictionary()
        try:  # one forward pass: the output structure to keep, the MACs and the widths before
            found = measured_forward(self.base, example_inputs)
        except Exception as e:  # noqa: BLE001 - the caller's model and inputs do not go together
            raise ValueError(f"the model does not run on example_inputs ({first_line(e, 160, with_type=True)}): "
                             "give inputs it accepts") from e
        self.reference = output_signature(found.output, self._batch)
        self._measured[self.base] = (_shapes(self.base), found.macs, found.widths)
        self.params_before = count_params(self.base)
        self.macs_before, self.widths_before = found.macs, found.widths

    # ------------------------------------------------------------------------------------------ measuring
    def measure(self, work: nn.Module, fresh: bool) -> None:
        """Bring the criterion up to date for ``work``: a ``fresh`` copy of the base shares the base's statistics
        (calibrated once); otherwise (a pruned model, Torch-Pruning's criteria) it is measured on ``work``."""
        imp = self.importance
        if requirements(imp).refresh is None:
            return
        if fresh and isinstance(imp, DataDrivenImportance):
            if not self._base_measured:
                self._refresh(self.base)
                self._base_measured = True
            imp.bind(work)
            return
        if self.calibration_data is None:
            if isinstance(imp, DataDrivenImportance):
                raise StaleStatisticsError("the model changed since the statistics were collected and no "
                                           "calibration_data was given to measure it again: pass calibration_data=")
            raise ValueError(f"{type(imp).__name__} needs data: pass calibration_data=")
        self._refresh(work)

    def _refresh(self, model: nn.Module) -> None:
        """The criterion measured on ``model`` with the calibration data. A batch the model cannot run is one
        :class:`CalibrationError` naming it; the loader's and the criterion's own errors pass as they are."""
        call: dict[str, Any] = {"index": -1, "open": False}

        def entering(_module, args, kwargs):
            call.update(index=call["index"] + 1, open=True, args=args, kwargs=kwargs)

        def leaving(_module, _args, _kwargs, _output):
            call["open"] = False

        handles = [model.register_forward_pre_hook(entering, with_kwargs=True),
                   model.register_forward_hook(leaving, with_kwargs=True)]
        try:
            refresh_importance(self.importance, model, self.calibration_data, self.calibration_batches)
        except (CalibrationError, NotCalibratedError, StaleStatisticsError):
            raise
        except Exception as e:
            if not call["open"]:  # raised outside the model's forward pass: the loader's own error
                raise
            for h in handles:
                h.remove()
            failure = _failure_of(model, call["args"], call["kwargs"])
            if failure is None:  # the model alone runs the batch: the criterion's hooks failed, as they did
                raise
            raise CalibrationError(f"calibration batch {call['index']} does not run through the model: "
                                   f"{first_line(failure)}; give batches shaped like the model's inputs") from e
        finally:
            for h in handles:
                h.remove()

    # ------------------------------------------------------------------------------------------ pruners
    def _restore_memory_format(self, work: nn.Module) -> None:
        """Pruned conv weights back in the model's memory format; a channels_last model's strided 1x1 convs run in
        NCHW on CPU (oneDNN's backward kernel for them crashes on some widths: repairs.memory_format)."""
        if self.memory_format == torch.channels_last:
            restore_memory_format(work, self.memory_format)
            guard_strided_1x1_convs(work)

    def fresh_copy(self) -> nn.Module:
        return copy.deepcopy(self.base).eval()

    def pruner(self, work: nn.Module, ratio: float = 0.5, steps: int = 1,
               ratio_dict: Mapping[nn.Module, float] | None = None) -> EntropyPruner:
        """An :class:`EntropyPruner` for ``work`` (a model of this engine's) with the kept layers ignored; the engine
        measures the criterion itself (:meth:`measure`), so the pruner gets no calibration data."""
        modules = dict(work.named_modules())
        ignored = [modules[n] for n in self.keep if n in modules]
        kwargs = dict(self.tp_kwargs)
        if ratio_dict:
            kwargs["pruning_ratio_dict"] = dict(ratio_dict)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return EntropyPruner(work, self.example_inputs, self.importance, pruning_ratio=ratio,
                                 iterative_steps=steps, ignored_layers=ignored, num_heads=attention_num_heads(work),
                                 global_pruning=self.global_pruning, round_to=self.round_to,
                                 group_time_limit=self.group_time_limit, refresh=False, **kwargs)

    def _new_pruner(self, work: nn.Module, **schedule) -> EntropyPruner:
        try:
            return self.pruner(work, **schedule)
        except (CalibrationError, NotCalibratedError, StaleStatisticsError):
            raise
        except Exception as e:  # noqa: BLE001 - a group that Torch-Pruning cannot even form fails on its root
            formation = _formation_failure(e, work)
            if formation is None:
                raise
            raise formation from None

    def _checked_step(self, pruner: EntropyPruner, work: nn.Module, each_group: bool) -> None:
        """One step, group by group; the forward pass is checked after every group (``each_group``) or once."""
        names = {m: n for n, m in work.named_modules()}
        scored: dict[str, Any] = {"roots": None}
        estimate = pruner.estimate_importance

        def tracking_estimate(group):  # remembers which group Torch-Pruning is working on
            scored["roots"] = _group_roots(group, names, pruner.DG)
            try:
                return estimate(group)
            except Exception as e:  # noqa: BLE001 - the criterion's own failure goes to the caller as it is
                raise _CriterionFailure(e) from e

        pruner.estimate_importance = tracking_estimate
        with repairs(self.group_time_limit), contextlib.closing(pruner.step(interactive=True)) as groups:
            while True:
                try:
                    group = next(groups)
                except StopIteration:
                    break
                except _CriterionFailure:
                    raise
                except Exception as e:  # noqa: BLE001 - Torch-Pruning failed on the group it was forming
                    formation = _formation_failure(e, work)
                    if formation is not None:
                        raise formation from None
                    if scored["roots"] is None:
                        raise
                    reason = f"Torch-Pruning cannot prune this group ({first_line(e, 160, with_type=True)})"
                    raise _GroupFailure(scored["roots"], reason) from None
                roots = _group_roots(group, names, pruner.DG)
                try:
                    group.prune()
                    if each_group:
                        sig = self._signature(work)
                except Exception as e:  # noqa: BLE001 - any failure of this group isolates it
                    reason = f"pruning breaks the forward pass ({first_line(e, 160, with_type=True)})"
                    raise _GroupFailure(roots, reason) from None
                if each_group and sig != self.reference:
                    raise _GroupFailure(roots, "pruning changes the output structure")
        if not each_group:
            try:
                sig = self._signature(work, measure=True)
            except Exception:  # noqa: BLE001 - some group broke the model; the checked pass finds which
                raise _BrokenSomewhere from None
            if sig != self.reference:
                raise _BrokenSomewhere

    def _signature(self, work: nn.Module, measure: bool = False) -> Any:
        """The output structure of ``work`` on the example inputs; with ``measure``, the same forward pass counts
        its MACs and widths (:meth:`measured`)."""
        sync_attention_heads(work)
        if not measure:
            return output_signature(forward(work, self.example_inputs), self._batch)
        found = measured_forward(work, self.example_inputs)
        self._measured[work] = (_shapes(work), found.macs, found.widths)
        return output_signature(found.output, self._batch)

    def measured(self, work: nn.Module) -> tuple[int | None, dict[str, int]]:
        """Torch-Pruning's MAC count (None where its counter fails) and the stage widths of ``work``: those of the
        forward pass that checked it, unless its shapes changed since; else one measured forward pass."""
        found = self._measured.get(work)
        if found is None or found[0] != _shapes(work):
            try:
                self._signature(work, measure=True)
            except Exception:  # noqa: BLE001 - a model the engine did not check may not run: nothing to count
                return None, {}
            found = self._measured[work]
        return found[1], found[2]

    def _keep_failing(self, failure: _GroupFailure) -> None:
        new = [r for r in failure.roots if r not in self.keep]
        if not new:
            raise RuntimeError(f"could not prune: {failure}") from None
        if self.rounds >= self.max_rounds:
            raise RuntimeError(f"gave up after isolating {self.max_rounds} groups that break the model "
                               f"(last: {failure}); kept: {self.keep}") from None
        self.rounds += 1
        # first time: keep the group's root; if it comes back re-rooted, keep every layer that could root it
        added = new[:1] if failure.roots[0] not in self.keep else new
        for name in added:
            self.keep[name] = failure.reason if name == failure.roots[0] else f"in the group of {failure.roots[0]}"
        # the same layer of a repeated block: a group Torch-Pruning cannot form, or a second failure at the same
        # place, keeps that layer in every copy of the block in one round instead of one round per copy
        modules = dict(self.base.named_modules())
        for name in added:
            copies = _same_place_in_repeated_blocks(name, modules)
            if failure.formation or any(other in self.keep for other in copies):
                for other in copies:
                    self.keep.setdefault(other, f"like {name}: {self.keep[name]}")

    def group_scores(self, work: nn.Module, importance: Any | None = None) -> dict[str, torch.Tensor]:
        """Each prunable group's score per root channel (``importance`` or the engine's, as Torch-Pruning's
        pruner would compute it, normaliser included), keyed by the root layer's name; ``work`` is not changed.
        The criterion is measured first when ``work`` is a fresh copy of the base (:meth:`measure`)."""
        imp = self.importance if importance is None else importance
        names = {m: n for n, m in work.named_modules()}
        pruner = self._new_pruner(work, ratio=0.0)
        scores: dict[str, torch.Tensor] = {}
        with repairs(self.group_time_limit):
            for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                 root_module_types=pruner.root_module_types):
                score = imp(group)
                name = names.get(group[0].dep.target.module)
                if score is not None and name is not None:
                    scores[name] = score.detach().float().cpu()
        return scores

    # ------------------------------------------------------------------------------------------ schedules
    def one_shot(self, ratio: float = 0.5, ratio_dict: Mapping[str, float] | None = None
                 ) -> tuple[nn.Module, EntropyPruner]:
        """One step at ``ratio`` (per group, or over all groups with global ranking; ``ratio_dict`` maps layer names
        to their own ratios) on a fresh copy. The first try checks the forward pass once, after every group is
        pruned; once something broke, each group is checked right after it is pruned, so that the failure has a
        name; breaking groups are kept and the step is redone without them."""
        _check_ratio(ratio)
        for name, r in (ratio_dict or {}).items():
            _check_ratio(r, f"ratio of {name!r}")
        each = False
        while True:
            work = self.fresh_copy()
            self.measure(work, fresh=True)  # outside the guard below: the caller's data errors pass as they are
            try:
                modules = dict(work.named_modules())
                per_layer = {modules[n]: r for n, r in (ratio_dict or {}).items()}
                pruner = self._new_pruner(work, ratio=ratio, ratio_dict=per_layer)
                self._checked_step(pruner, work, each_group=each)
                self._restore_memory_format(work)
                return work, pruner
            except _BrokenSomewhere:
                each = True
            except _GroupFailure as failure:
                self._keep_failing(failure)
            except _CriterionFailure as failure:
                raise failure.error from None
            except (CalibrationError, NotCalibratedError, StaleStatisticsError, GroupFormationTimeout):
                raise
            except Exception as e:  # noqa: BLE001 - e.g. the dependency graph itself cannot be built
                raise RuntimeError(f"Torch-Pruning cannot prune this model: {first_line(e, 160, with_type=True)}") \
                    from e

    def search_ratio(self, speed_up: float, tolerance: float = 0.05, max_probes: int = 6,
                     max_bisections: int = 12) -> tuple[float, nn.Module, EntropyPruner]:
        """The smallest ratio (on a grid of 1e-3) whose one-shot step reaches ``speed_up`` (Torch-Pruning's MACs):
        regula falsi (Illinois) on ``sqrt(MACs)``, which falls about linearly with the ratio, from a first probe at
        0.5; stops once a probe reaches the target by at most ``tolerance`` more, or the bracket is 1e-3 wide.
        Where ``max_probes`` such probes leave the closest probe above the tolerance (the speed-up bends so sharply
        that the secant creeps along one end: global LAMP on a trained ResNet-20 reached 2.00x at 0.52 but 130x at
        0.95), bisection goes on, at most ``max_bisections`` probes, until the tolerance or the 1e-3 bracket is
        reached; a speed-up that still jumps past the tolerance between two neighbouring ratios is a warning.
        Each probe is a :meth:`one_shot` (so breaking groups are isolated there); the criterion is measured once.
        Returns ``(ratio, model, pruner)`` of the probe that reached the target closest from above.

        Raises:
            RuntimeError: MACs cannot be counted, or even ratio 0.95 does not reach the target.
        """
        if self.macs_before is None:
            raise RuntimeError("speed_up needs MAC counts, which Torch-Pruning's counter cannot produce for this "
                               "model; use ratio= instead")
        goal = math.sqrt(1.0 / speed_up)
        probes: dict[float, tuple[float, nn.Module, EntropyPruner]] = {}

        def gap(r: float) -> float:  # sqrt(MACs after / before) - goal: <= 0 once the target is reached
            work, pruner = self.one_shot(r)
            macs = self.measured(work)[0]
            if macs is None:
                raise RuntimeError("Torch-Pruning's MAC counter fails on the pruned model; use ratio= instead")
            probes[r] = (macs, work, pruner)
            return math.sqrt(macs / self.macs_before) - goal

        lo, g_lo, hi = 0.0, 1.0 - goal, 0.5
        g_hi = gap(hi)
        if g_hi > 0:
            lo, g_lo, hi = hi, g_hi, 0.95
            g_hi = gap(hi)
            if g_hi > 0:
                raise RuntimeError(f"speed-up {speed_up} is not reached even at ratio {hi} (reached "
                                   f"{self.macs_before / probes[hi][0]:.2f}x); lower the target")
        last = 0
        for _ in range(max_probes):
            if hi - lo <= 1.5e-3 or self.macs_before / probes[hi][0] <= speed_up * (1 + tolerance):
                break
            r = min(max(round((lo * g_hi - hi * g_lo) / (g_hi - g_lo), 3), round(lo + 1e-3, 3)), round(hi - 1e-3, 3))
            g = gap(r)
            if g <= 0:
                hi, g_hi = r, g
                g_lo = g_lo / 2 if last == 1 else g_lo  # Illinois: the other end stayed twice, halve its weight
                last = 1
            else:
                lo, g_lo = r, g
                g_hi = g_hi / 2 if last == -1 else g_hi
                last = -1
            _keep_only(probes, hi)

        def reached(r: float) -> float:
            return self.macs_before / probes[r][0]

        for _ in range(max_bisections):
            if hi - lo <= 1.5e-3 or reached(hi) <= speed_up * (1 + tolerance):
                break
            r = round((lo + hi) / 2, 3)  # strictly inside: both ends lie on the 1e-3 grid, >= 2e-3 apart
            if gap(r) <= 0:
                hi = r
            else:
                lo = r
            _keep_only(probes, hi)
        if reached(hi) > speed_up * (1 + tolerance):
            below = f"{reached(lo):.2f}x at ratio {lo}" if lo in probes else f"none below ratio {hi}"
            warnings.warn(f"speed-up {speed_up} overshot: the closest ratio reaching it, {hi}, gives "
                          f"{reached(hi):.2f}x ({below}); the speed-up jumps there (a group whose removal takes many "
                          "MACs at once)", stacklevel=3)
        _, work, pruner = probes[hi]
        return hi, work, pruner

    def progressive(self, ratio: float = 0.9, steps: int = 40, ratio_dict: Mapping[str, float] | None = None
                    ) -> Iterator[EngineStep]:
        """``steps`` equal steps towards ``ratio`` on a fresh copy (Torch-Pruning's ``iterative_steps``), the
        criterion re-measured on the pruned model before each; yields an :class:`EngineStep` after each. Groups
        found to break the model by an earlier :meth:`one_shot` stay kept; the output structure is checked after
        every step."""
        _check_ratio(ratio)
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        work = self.fresh_copy()
        self.measure(work, fresh=True)
        modules = dict(work.named_modules())
        pruner = self._new_pruner(work, ratio=ratio, steps=steps,
                                  ratio_dict={modules[n]: r for n, r in (ratio_dict or {}).items()})
        for index in range(1, steps + 1):
            if index > 1:
                self.measure(work, fresh=False)
            with repairs(self.group_time_limit):
                pruner.step()
            self._restore_memory_format(work)
            if self._signature(work, measure=True) != self.reference:
                raise RuntimeError(f"step {index} changed the output structure; run one_shot() first so that "
                                   "breaking groups are found and kept")
            macs = self.measured(work)[0]
            speed = self.macs_before / macs if macs and self.macs_before else None
            yield EngineStep(index, work, pruner, macs, speed)

    # ------------------------------------------------------------------------------------------ results
    def recover(self, work: nn.Module, method: str, pruner: EntropyPruner | None = None, **options: Any
                ) -> RecoveryReport:
        """Repair ``work`` in place with :func:`~entropy_importance.recover` on the engine's calibration data, so that
        it reproduces the unpruned base: ``work`` carries its record (after :meth:`finish`), or ``pruner`` is the
        one pruning it (between :meth:`progressive` steps)."""
        if self.calibration_data is None:
            raise ValueError(f"recovery {method!r} needs calibration_data= (batches of inputs)")
        _, report = recover(self.base, work, self.calibration_data, method, inplace=True, history=pruner,
                            calibration_batches=self.calibration_batches, **options)
        return report

    def finish(self, work: nn.Module, pruners: Iterable[EntropyPruner], steps: int = 1, ratio: float | None = None,
               meta: dict | None = None) -> PruneReport:
        """The report for ``work``, and its pruning record attached (so that ``save_pruned`` can write it): the
        record of the caller's model (if it was pruned before) extended by each pruner's history."""
        record = self._record or PruningRecord(build_spec(self.base), state_signature(self.base), self._inputs)
        for pruner in pruners:
            record = record.extended(pruner.pruning_history(), meta)
        attach_record(work, record)
        macs, widths = self.measured(work)
        return PruneReport(self.params_before, count_params(work), self.macs_before, macs, self.widths_before,
                           widths, {**self.keep, **self.left_whole(work, pruners)}, steps, self.rounds, ratio)

    def left_whole(self, work: nn.Module, pruners: Iterable[EntropyPruner]) -> dict[str, str]:
        """The groups Torch-Pruning's steps skipped (:attr:`EntropyPruner.skipped` of the last step of each pruner)
        whose root layer still has its width in the base (output channels, or input channels for a group rooted at
        them), by the root's name: why each was left whole."""
        base = dict(self.base.named_modules())
        names = {m: n for n, m in work.named_modules()}
        left: dict[str, str] = {}
        for pruner in pruners:
            for module, reason in pruner.skipped.items():
                name = names.get(module)
                if name is None or name in self.keep or name not in base:
                    continue
                width = pruner.skipped_width(module)
                if width is None and _shapes(module) == _shapes(base[name]) or \
                        width is not None and width == pruner.skipped_width(module, base[name]):
                    left[name] = reason
        return left


def _failure_of(model: nn.Module, args: tuple, kwargs: dict) -> BaseException | None:
    """The error ``model(*args, **kwargs)`` raises without gradients, or None when it runs."""
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - returned for the message
        return e
    return None


def _check_ratio(ratio: Any, what: str = "ratio") -> None:
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0):
        raise ValueError(f"{what} must be in [0, 1), got {ratio!r}")

