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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..calibration.errors import CalibrationError, NotCalibratedError, StaleStatisticsError
from ..calibration.observe import DataDrivenImportance
from ..calibration.refresh import refresh_importance, requirements, reusable_batches
from ..criteria.registry import create_importance
from ..models import build_spec
from ..recovery import RecoveryReport, recover
from ..repairs import GROUP_TIME_LIMIT, GroupFormationTimeout, repairs
from ..serialization import PruningRecord, attach_record, describe_inputs, pruning_record, state_signature
from .attention import attention_num_heads, sync_attention_heads
from .counting import count_params, stage_widths, tp_macs
from .heads import task_heads
from .outputs import batch_size, forward, output_signature
from .pruner import EntropyPruner

__all__ = ["Engine", "PruneReport", "EngineStep"]

_SET_BY_ENGINE = ("pruning_ratio", "iterative_steps", "ignored_layers", "num_heads", "importance",
                  "pruning_ratio_dict", "global_pruning", "round_to")


@dataclass
class PruneReport:
    """What the engine did. MACs are Torch-Pruning's counter (``tp.utils.count_ops_and_params``)."""

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


def _short(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text[:160]


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
    return None if root is None else _GroupFailure([root], f"Torch-Pruning cannot form this group ({_short(e)})", True)


def _check_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p.detach().sum()) and not torch.isfinite(p.detach()).all():
            raise ValueError(f"parameter {name!r} has NaN or Inf values: channels cannot be ranked on non-finite "
                             "weights; check the checkpoint or the training run that produced it")


def _widths(model: nn.Module, x: Any) -> dict[str, int]:
    if not isinstance(x, torch.Tensor):
        return {}
    try:
        return stage_widths(model, x)
    except Exception:  # noqa: BLE001 - widths are informative only
        return {}


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
        self.importance = copy.deepcopy(importance)  # the caller's instance keeps its state
        self._base_measured = False
        if isinstance(self.importance, DataDrivenImportance) and self.importance.calibrated \
                and self.calibration_data is None:
            self.importance.bind(self.base)  # calibrated on the caller's model, of which the base is a copy
            self._base_measured = True
        self._batch = batch_size(example_inputs)
        try:
            self.reference = output_signature(forward(self.base, example_inputs), self._batch)
        except Exception as e:  # noqa: BLE001 - the caller's model and inputs do not go together
            raise ValueError(f"the model does not run on example_inputs ({_short(e)}): give inputs it accepts") from e
        self.params_before = count_params(self.base)
        self.macs_before = tp_macs(self.base, example_inputs)
        self.widths_before = _widths(self.base, example_inputs)

    # ------------------------------------------------------------------------------------------ measuring
    def measure(self, work: nn.Module, fresh: bool) -> None:
        """Bring the criterion up to date for ``work``: a ``fresh`` copy of the base shares the base's statistics
        (calibrated once); otherwise (a pruned model, Torch-Pruning's criteria) it is measured on ``work``."""
        imp = self.importance
        if requirements(imp).refresh is None:
            return
        if fresh and isinstance(imp, DataDrivenImportance):
            if not self._base_measured:
                refresh_importance(imp, self.base, self.calibration_data, self.calibration_batches)
                self._base_measured = True
            imp.bind(work)
            return
        if self.calibration_data is None:
            if isinstance(imp, DataDrivenImportance):
                raise StaleStatisticsError("the model changed since the statistics were collected and no "
                                           "calibration_data was given to measure it again: pass calibration_data=")
            raise ValueError(f"{type(imp).__name__} needs data: pass calibration_data=")
        refresh_importance(imp, work, self.calibration_data, self.calibration_batches)

    # ------------------------------------------------------------------------------------------ pruners
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
                    raise _GroupFailure(scored["roots"], f"Torch-Pruning cannot prune this group ({_short(e)})") \
                        from None
                roots = _group_roots(group, names, pruner.DG)
                try:
                    group.prune()
                    if each_group:
                        sig = self._signature(work)
                except Exception as e:  # noqa: BLE001 - any failure of this group isolates it
                    raise _GroupFailure(roots, f"pruning breaks the forward pass ({_short(e)})") from None
                if each_group and sig != self.reference:
                    raise _GroupFailure(roots, "pruning changes the output structure")
        if not each_group:
            try:
                sig = self._signature(work)
            except Exception:  # noqa: BLE001 - some group broke the model; the checked pass finds which
                raise _BrokenSomewhere from None
            if sig != self.reference:
                raise _BrokenSomewhere

    def _signature(self, work: nn.Module) -> Any:
        sync_attention_heads(work)
        return output_signature(forward(work, self.example_inputs), self._batch)

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
                raise RuntimeError(f"Torch-Pruning cannot prune this model: {_short(e)}") from e

    def search_ratio(self, speed_up: float, tolerance: float = 0.05, max_probes: int = 6
                     ) -> tuple[float, nn.Module, EntropyPruner]:
        """The smallest ratio (on a grid of 1e-3) whose one-shot step reaches ``speed_up`` (Torch-Pruning's MACs):
        regula falsi (Illinois) on ``sqrt(MACs)``, which falls about linearly with the ratio, from a first probe at
        0.5; stops once a probe reaches the target by at most ``tolerance`` more, or the bracket is 1e-3 wide.
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
            macs = tp_macs(work, self.example_inputs)
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
            if self._signature(work) != self.reference:
                raise RuntimeError(f"step {index} changed the output structure; run one_shot() first so that "
                                   "breaking groups are found and kept")
            macs = tp_macs(work, self.example_inputs)
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
        return PruneReport(self.params_before, count_params(work), self.macs_before,
                           tp_macs(work, self.example_inputs), self.widths_before,
                           _widths(work, self.example_inputs), dict(self.keep), steps, self.rounds, ratio)


def _check_ratio(ratio: Any, what: str = "ratio") -> None:
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0):
        raise ValueError(f"{what} must be in [0, 1), got {ratio!r}")

