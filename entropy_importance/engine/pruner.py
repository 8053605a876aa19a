"""A Torch-Pruning pruner that refreshes data-dependent criteria before every step, inside the repairs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning._helpers import to_plain_idxs

from ..calibration.refresh import refresh_importance, requirements, reusable_batches
from ..repairs import repairs

__all__ = ["EntropyPruner"]


class EntropyPruner(tp.pruner.BasePruner):
    """``tp.pruner.BasePruner`` that refreshes data-dependent criteria
    (:func:`~entropy_importance.calibration.refresh_importance`: our ``calibrate()``, Torch-Pruning's Taylor gradients
    and activation statistics) before each ``step()``, and builds its graph and prunes inside
    :func:`~entropy_importance.repairs`, so that iterative pruning with a data-driven criterion is a one-line swap::

        pruner = EntropyPruner(model, example_inputs, importance=create_importance("gap-entropy"),
                               calibration_data=loader, calibration_batches=10,
                               pruning_ratio=0.5, iterative_steps=5, ignored_layers=[model.fc])
        for _ in range(5):
            pruner.step()          # re-calibrates, then prunes
            finetune(model)

    Statistics are those of the current (already pruned) network. Calibration happens before anything is pruned in
    a step, so a calibration error leaves the model as it was. Without ``calibration_data`` a data-driven
    importance must already be calibrated on ``model``, and its statistics are used as they are (one step; a second
    raises the staleness error). A one-shot iterator as ``calibration_data`` is read once, up to
    ``calibration_batches`` batches, and kept. ``group_time_limit``: see :func:`~entropy_importance.repairs`.
    ``refresh=False``: ``step()`` does not measure the criterion (the caller does).
    Every other argument is Torch-Pruning's.

    At least one channel per group (per channel group of a grouped layer) is kept: where Torch-Pruning's ranking
    selects every channel of a group (local pruning at a ratio above ``1 - 1/channels``, or a group whose channels
    all rank below the global threshold), Torch-Pruning 1.6 skips the group and leaves it whole; this pruner prunes
    it to its best-scored channel instead. :attr:`skipped` says, after each step, which groups the step left as they
    were and why.
    """

    #: the groups the last step left as they were, by root module, and why: a layer of the group is kept (ignored),
    #: the criterion gave it no scores, a layer of it has one channel left, or even keeping the best channel would
    #: leave a coupled layer without channels
    skipped: dict[nn.Module, str]

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        importance: tp.importance.Importance,
        *,
        calibration_data: Iterable | None = None,
        calibration_batches: int | None = None,
        calibration_device: torch.device | str | None = None,
        group_time_limit: float | None = None,
        refresh: bool = True,
        **kwargs,
    ) -> None:
        if refresh and calibration_data is None and requirements(importance).data \
                and not getattr(importance, "calibrated", False):
            raise ValueError(
                f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)"
            )
        self.calibration_data = reusable_batches(calibration_data, calibration_batches)
        self.calibration_batches = calibration_batches
        self.calibration_device = calibration_device
        self.group_time_limit = group_time_limit
        self.refresh = refresh
        self.skipped: dict[nn.Module, str] = {}
        self._skipped_out: dict[nn.Module, bool] = {}  # whether the skipped group is of its root's output channels
        self._scores: dict[tuple[nn.Module, object], torch.Tensor] = {}
        with repairs(group_time_limit):
            super().__init__(model, example_inputs, importance, **kwargs)

    def calibrate(self) -> None:
        """Bring the importance up to date with the current model (nothing without ``calibration_data``, or with
        ``refresh=False``: the caller measures it, as :class:`~entropy_importance.Engine` does)."""
        if self.refresh and self.calibration_data is not None:
            refresh_importance(self.importance, self.model, self.calibration_data, self.calibration_batches,
                               self.calibration_device)

    def step(self, interactive: bool = False):
        self.calibrate()
        if interactive:  # the groups are formed and pruned while the caller iterates: stay inside the repairs
            return self._within_repairs(super().step(interactive=True))
        with repairs(self.group_time_limit):
            result = super().step()
        if requirements(self.importance).grad:
            self.model.zero_grad(set_to_none=True)  # the gradients we left are stale once shapes change
        return result

    def _within_repairs(self, groups: Iterator) -> Iterator:
        with repairs(self.group_time_limit):
            yield from groups

    # ------------------------------------------------------------------ groups Torch-Pruning would skip
    def estimate_importance(self, group) -> torch.Tensor | None:
        imp = super().estimate_importance(group)
        dep = group[0].dep
        if imp is None:
            self._skip(dep, f"{type(self.importance).__name__} gives this group no scores")
        else:
            self._scores[(dep.target.module, dep.handler)] = imp.detach()
        return imp

    def _check_pruning_ratio(self, group) -> bool:
        if super()._check_pruning_ratio(group):
            return True
        self._skip(group[0].dep, "a layer of this group has a single channel left")
        return False

    def _prune(self) -> Iterator:
        """Torch-Pruning's groups, then the groups it skipped because the ranking selected every channel of a layer,
        each pruned to all but its best-scored channel (per channel group). Every group the step leaves as it was
        gets its reason in :attr:`skipped`."""
        self.skipped, self._skipped_out, self._scores = {}, {}, {}
        graph, emptying = self.DG, []

        def check_pruning_group(group) -> bool:
            ok = type(graph).check_pruning_group(graph, group)
            if not ok:
                emptying.append(group)
            return ok

        # on this graph only, for this step (Torch-Pruning's _prune calls both through self.DG)
        graph.check_pruning_group, graph.get_all_groups = check_pruning_group, self._all_groups
        try:
            yield from super()._prune()
        finally:
            vars(graph).pop("check_pruning_group", None)
            vars(graph).pop("get_all_groups", None)
        for group in emptying:
            kept = self._all_but_the_best(group)
            if kept is not None:
                yield kept
                continue
            dep = group[0].dep
            empty = next((d.target.module for d, idxs in group if self._empties(d, idxs)), dep.target.module)
            layer = "its root layer" if empty is dep.target.module else repr(self._name(empty))
            self._skip(dep, f"pruning the channels chosen would leave {layer} without channels (Torch-Pruning's "
                            "index mapping), even with the root's best-scored channel kept")

    def _skip(self, dep, reason: str) -> None:
        self.skipped[dep.target.module] = reason
        self._skipped_out[dep.target.module] = self.DG.is_out_channel_pruning_fn(dep.handler)

    def skipped_width(self, root: nn.Module, layer: nn.Module | None = None) -> int | None:
        """The width of ``layer`` (default: ``root``) in the dimension the skipped group rooted at ``root`` prunes
        (output or input channels), as Torch-Pruning reads it; ``layer`` may be a copy of ``root`` in another model."""
        layer = root if layer is None else layer
        pruner = self.DG.get_pruner_of_module(layer)
        if pruner is None:
            return None
        return pruner.get_out_channels(layer) if self._skipped_out.get(root, True) else pruner.get_in_channels(layer)

    def _name(self, layer) -> str:
        graph = self.DG
        return graph._param_to_name.get(layer) or graph._module2name.get(layer, "?")

    def _empties(self, dep, idxs) -> bool:
        """Whether pruning ``idxs`` through ``dep`` removes every channel of its layer (Torch-Pruning's
        ``check_pruning_group``, one dependency)."""
        graph = self.DG
        if graph.is_out_channel_pruning_fn(dep.handler):
            channels = graph.get_out_channels(dep.target.module)
        elif graph.is_in_channel_pruning_fn(dep.handler):
            channels = graph.get_in_channels(dep.target.module)
        else:
            return False
        return channels is not None and channels <= len(idxs)

    def _all_groups(self, ignored_layers=(), root_module_types=(ops.TORCH_CONV, ops.TORCH_LINEAR)) -> Iterator:
        """``DependencyGraph.get_all_groups`` of Torch-Pruning 1.6 (the same roots, in the same order, the same
        groups), except that a group left out because a layer of it is kept (ignored) is recorded in
        :attr:`skipped`, by its first root, with the kept layer it is coupled with."""
        graph = self.DG
        ignored = list(ignored_layers) + list(graph.IGNORED_LAYERS_IN_TRACING)
        ignored_ids = {id(m) for m in ignored}
        visited: set[int] = set()
        for m in list(graph.module2node.keys()):
            if id(m) in ignored_ids or not isinstance(m, tuple(root_module_types)):
                continue
            pruner = graph.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None or id(m) in visited:
                continue
            group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            kept = None
            for dep, _ in group:
                if graph.is_out_channel_pruning_fn(dep.handler):
                    visited.add(id(dep.target.module))
                    if kept is None and id(dep.target.module) in ignored_ids:
                        kept = dep.target.module
            if kept is None:
                yield group
            else:
                self._skip(group[0].dep, f"its channels are coupled with {self._name(kept)!r}, which is kept "
                                         "unpruned")

    def _all_but_the_best(self, group):
        """``group`` (whose pruning would empty a layer) re-formed to keep its root's best-scored channel in every
        channel group, or None where that is not the problem or does not solve it (attention heads are left to
        Torch-Pruning's own bookkeeping)."""
        graph = self.DG
        dep = group[0].dep
        module, handler = dep.target.module, dep.handler
        scores = self._scores.get((module, handler))
        if scores is None or self._is_atten_group(group)[0]:
            return None
        channels = (graph.get_out_channels(module) if graph.is_out_channel_pruning_fn(handler)
                    else graph.get_in_channels(module))
        idxs = sorted({int(i) for i in to_plain_idxs(group[0].idxs)})
        ch_groups = self._get_channel_groups(group)
        if channels is None or len(idxs) < channels or len(scores) != channels or channels % ch_groups:
            return None
        size = channels // ch_groups
        per_channel = scores.float().view(ch_groups, size).mean(0) if ch_groups > 1 else scores.float()
        best = int(torch.argmax(per_channel))
        keep = {best + g * size for g in range(ch_groups)}
        trimmed = graph.get_pruning_group(module, handler, [i for i in idxs if i not in keep])
        return trimmed if type(graph).check_pruning_group(graph, trimmed) else None
