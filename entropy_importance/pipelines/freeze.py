"""Maximum-entropy filter freeze for fine-tuning (2PFPCE, Min et al. 2018): :func:`freeze_max_entropy`."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from ..calibration.errors import StaleStatisticsError
from ..calibration.observe import DataDrivenImportance
from ..calibration.refresh import refresh_importance, requirements
from ..criteria.conditional_entropy import ConditionalEntropyImportance
from ..criteria.registry import create_importance
from ..engine.heads import task_heads
from ..repairs import per_output_parameters, repairs

__all__ = ["FrozenChannels", "freeze_max_entropy", "frozen_count"]

_ROOT_TYPES = [nn.modules.conv._ConvNd, nn.Linear]
_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def frozen_count(channels: int, fraction: float) -> int:
    """How many of a group's ``channels`` root channels are frozen: ``ceil(fraction * channels)``, at least one when
    ``fraction > 0``, at most ``channels`` (``fraction * channels`` is rounded to 9 decimals first, so that
    ``0.7 * 10`` gives 7, not 8)."""
    if fraction <= 0 or channels <= 0:
        return 0
    return min(channels, max(1, math.ceil(round(fraction * channels, 9))))


@dataclass(eq=False)
class FrozenChannels:
    """What :func:`freeze_max_entropy` froze (the maximum-entropy filters of 2PFPCE, Min et al. 2018, with every
    parameter entry coupled to them).

    Attributes:
        frozen: ``{root layer name: sorted frozen root channel indices}``, one entry per scored group.
        masks: ``{parameter name: bool mask}`` of the frozen entries of every parameter touched (same shape as the
            parameter; do not modify).
        unscored: root layers of the groups the importance could not score (it returned ``None``): nothing of those
            groups is frozen.
        unmapped: layers in frozen groups whose parameters this helper does not know how to split by channel (not
            conv / linear / norm / PReLU): their entries are not frozen.
    """

    frozen: dict[str, list[int]] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    unscored: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    _saved: list[tuple[nn.Parameter, Tensor, Tensor]] = field(default_factory=list, repr=False)

    @property
    def num_entries(self) -> int:
        """Number of frozen parameter entries."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @torch.no_grad()
    def restore(self) -> None:
        """Write the saved values back into the frozen entries (in place; the parameters stay the same objects)."""
        for param, mask, values in self._saved:
            _write_back(param, mask, values)


def _write_back(param: nn.Parameter, mask: Tensor, values: Tensor) -> None:
    current = param.detach()
    if not torch.equal(current[mask], values):  # no write (no version bump) when nothing moved
        current[mask] = values


# ---------------------------------------------------------------------------------------------- channel entries
def _mark_rows(masks: dict[nn.Parameter, Tensor], param: Tensor | None, idx: Tensor, dim: int = 0) -> None:
    if param is None or not isinstance(param, nn.Parameter) or param.dim() == 0:
        return
    mask = masks.setdefault(param, torch.zeros_like(param, dtype=torch.bool))
    mask.index_fill_(dim % param.dim(), idx.to(param.device), True)


def _mark_grouped(masks: dict[nn.Parameter, Tensor], weight: nn.Parameter, idx: Tensor, groups: int,
                  axis_size: int) -> None:
    """Channels ``idx`` on weight dim 1 of a grouped layout ``(groups * A, axis_size / groups, ...)``: channel ``c``
    is column ``c % per`` of the rows of group ``c // per``."""
    per = axis_size // groups
    rows = weight.shape[0] // groups
    mask = masks.setdefault(weight, torch.zeros_like(weight, dtype=torch.bool))
    idx = idx.to(weight.device)
    view = mask.view(groups, rows, per, *weight.shape[2:])
    view[idx // per, :, idx % per] = True


def _mark_entries(masks: dict[nn.Parameter, Tensor], module: nn.Module, out: bool, idx: Tensor) -> bool:
    """Mark the entries of ``module``'s own parameters that belong to its channels ``idx`` (output channels when
    ``out``, else input channels); False when the module has parameters this helper cannot split by channel."""
    if isinstance(module, nn.modules.conv._ConvNd):
        w, groups = module.weight, module.groups
        if groups == module.out_channels and groups > 1:  # depthwise (Torch-Pruning's rule): both directions rows
            _mark_rows(masks, w, idx)
            _mark_rows(masks, module.bias, idx)
        elif out:
            if module.transposed:  # weight (in, out / groups, *k)
                _mark_grouped(masks, w, idx, groups, module.out_channels)
            else:
                _mark_rows(masks, w, idx)
                for _, p in per_output_parameters(module):
                    _mark_rows(masks, p, idx)
            _mark_rows(masks, module.bias, idx)
        elif module.transposed:
            _mark_rows(masks, w, idx)
        else:  # weight (out, in / groups, *k)
            _mark_grouped(masks, w, idx, groups, module.in_channels)
        return True
    if isinstance(module, nn.Linear):
        _mark_rows(masks, module.weight, idx, 0 if out else 1)
        if out:
            _mark_rows(masks, module.bias, idx)
        return True
    if isinstance(module, _PER_CHANNEL_NORMS):
        _mark_rows(masks, module.weight, idx)
        _mark_rows(masks, module.bias, idx)
        return True
    if isinstance(module, nn.LayerNorm):  # Torch-Pruning prunes the last normalised dimension
        _mark_rows(masks, module.weight, idx, -1)
        _mark_rows(masks, module.bias, idx, -1)
        return True
    if isinstance(module, nn.PReLU):
        if module.weight.numel() > 1:
            _mark_rows(masks, module.weight, idx)
        return True
    return not any(True for _ in module.parameters(recurse=False))


def _channel_width(module: nn.Module, out: bool) -> int | None:
    """How many channels ``module`` has in the direction of a dependency (None: unknown, not checked)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == module.out_channels and module.groups > 1:
            return module.out_channels
        return module.out_channels if out else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    if isinstance(module, _PER_CHANNEL_NORMS + (nn.PReLU,)) and getattr(module, "weight", None) is not None:
        return module.weight.shape[0] if module.weight.numel() > 1 else None
    if isinstance(module, nn.LayerNorm) and module.weight is not None:
        return module.weight.shape[-1]
    return None


# ---------------------------------------------------------------------------------------------- scoring
def _order(primary: Tensor, secondary: Tensor | None) -> Tensor:
    """Channel indices by ``primary`` descending, ties by ``secondary`` descending, then by index."""
    order = torch.arange(primary.numel())
    if secondary is not None:
        order = torch.argsort(secondary, descending=True, stable=True)
    return order[torch.argsort(primary[order], descending=True, stable=True)]


def _root_scores(imp: Any, group, root_name: str, n: int) -> tuple[Tensor | None, Tensor | None]:
    """``(primary, secondary)`` scores of a group's ``n`` root channels: ``H(Z_j)`` of the root layer then the
    importance's group score for :class:`ConditionalEntropyImportance` measured at layer outputs; else the group
    score alone. ``(None, None)`` when the importance cannot score the group."""
    score = imp(group)
    if score is not None:
        score = torch.nan_to_num(torch.as_tensor(score).detach().float().cpu().reshape(-1), nan=float("-inf"))
        if score.numel() != n:
            raise RuntimeError(f"{type(imp).__name__} returned {score.numel()} scores for the group of {root_name!r} "
                               f"with {n} channels")
    if isinstance(imp, ConditionalEntropyImportance) and imp.where == "output":
        try:
            marginal = imp.marginal_entropy(root_name).detach().float().cpu().reshape(-1)
        except KeyError:  # the root layer saw no calibration data
            marginal = None
        if marginal is not None and marginal.numel() == n:
            return marginal, score
    return score, None


def _check_fraction(fraction: Any) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    return float(fraction)


def _measured(imp: Any, model: nn.Module, data: Iterable, max_batches: int | None) -> Any:
    """A copy of ``imp`` measured on ``model`` (the caller's instance keeps its state)."""
    fresh = copy.deepcopy(imp)
    if isinstance(fresh, DataDrivenImportance):
        fresh.reset()
    refresh_importance(fresh, model, data, max_batches)
    return fresh


def _select(model: nn.Module, imp: Any, fraction: float, example_inputs: Any, calibration_data: Iterable | None,
            calibration_batches: int | None, ignored: list[nn.Module]) -> FrozenChannels:
    """Build the dependency graph, score every group and mark the frozen entries (the model's modes and gradients
    are restored; its parameters and buffers are not changed)."""
    result = FrozenChannels()
    names = {m: n for n, m in model.named_modules()}
    modes = [(m, m.training) for m in model.modules()]
    needs = requirements(imp)
    grads = {p: p.grad for p in model.parameters()} if needs.grad else {}
    masks: dict[nn.Parameter, Tensor] = {}
    try:
        measured = needs.data and calibration_data is not None and not getattr(imp, "calibrated", False)
        if measured:
            imp = _measured(imp, model, calibration_data, calibration_batches)
        model.eval()  # the trace must not update BatchNorm statistics
        with repairs():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
            groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=_ROOT_TYPES))
            roots = [(names.get(g[0].dep.target.module, str(g[0].dep.target.module)), len(g[0].idxs)) for g in groups]
            try:
                scores = [_root_scores(imp, g, name, n) for g, (name, n) in zip(groups, roots, strict=True)]
            except StaleStatisticsError:
                if measured or calibration_data is None:
                    raise
                # calibrated on another model (or before pruning changed this one): measure a copy on this one
                imp = _measured(imp, model, calibration_data, calibration_batches)
                scores = [_root_scores(imp, g, name, n) for g, (name, n) in zip(groups, roots, strict=True)]
            for group, (root_name, n), (primary, secondary) in zip(groups, roots, scores, strict=True):
                if primary is None:
                    result.unscored.append(root_name)
                    continue
                top = sorted(_order(primary, secondary)[:frozen_count(n, fraction)].tolist())
                result.frozen[root_name] = top
                if top:
                    _mark_group(masks, graph, group, set(top), names, result.unmapped)
    finally:
        for m, training in modes:
            m.training = training
        for p, g in grads.items():
            p.grad = g
    param_names = {p: n for n, p in model.named_parameters()}
    for param, mask in masks.items():
        if param in param_names:
            result.masks[param_names[param]] = mask
            result._saved.append((param, mask, param.detach()[mask].clone()))
    return result


def _mark_group(masks: dict[nn.Parameter, Tensor], graph: tp.DependencyGraph, group, chosen: set[int],
                names: dict[nn.Module, str], unmapped: list[str]) -> None:
    """Mark, for every dependency of ``group``, the layer's entries of the ``chosen`` root channels (root channels
    map to the layer's channels through ``root_idxs`` -> ``idxs``)."""
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        idxs = sorted({i for i, r in zip(item.idxs, item.root_idxs, strict=True) if r in chosen})
        if not idxs:
            continue
        width = _channel_width(module, out)
        known = (width is None or idxs[-1] < width) and \
            _mark_entries(masks, module, out, torch.as_tensor(idxs, dtype=torch.long))
        if not known and names[module] not in unmapped:
            unmapped.append(names[module])  # out of range (a Torch-Pruning mapping) or a layer type not known here


# ---------------------------------------------------------------------------------------------- the context manager
def freeze_max_entropy(
    model: nn.Module,
    importance: Any,
    fraction: float = 0.2,
    example_inputs: Any = None,
    calibration_data: Iterable | None = None,
    ignored_layers: Iterable[nn.Module] | None = None,
    calibration_batches: int | None = None,
) -> AbstractContextManager[FrozenChannels]:
    """Freeze the highest-entropy filters of every group during fine-tuning: the second phase of 2PFPCE (Min, Wang,
    Chen, Xu, Chen, "2PFPCE: Two-Phase Filter Pruning Based on Conditional Entropy", arXiv:1809.02220, 2018), where
    the filters with the largest marginal entropy ``H(Z_j)`` get no gradient while the pruned network is fine-tuned.

    A context manager::

        with freeze_max_entropy(model, imp, fraction=0.2, example_inputs=x, calibration_data=loader) as state:
            train(model, ...)          # state.frozen == {root layer name: frozen root channels}

    On entry, Torch-Pruning's dependency graph of ``model`` is built (inside :func:`~entropy_importance.repairs`, in
    eval mode) and its groups formed with conv / linear roots, the ``ignored_layers`` not rooting any (default: the
    task heads, :func:`~entropy_importance.task_heads`; a given list replaces that default, so add the heads to it to
    keep them). Per group of ``n`` root channels, the ``ceil(fraction * n)`` channels (at least one when
    ``fraction > 0``) with the highest score are frozen, the score being ``H(Z_j)`` of the root layer
    (:meth:`ConditionalEntropyImportance.marginal_entropy`, ties broken by the group score) for a
    :class:`ConditionalEntropyImportance` measured at layer outputs, else ``importance(group)`` (any Torch-Pruning
    importance: e.g. GAP entropy, Luo & Wu 2017, or information capacity). A data-driven importance that is not
    calibrated is measured on ``model`` with ``calibration_data`` (at most ``calibration_batches`` batches) first, on a
    copy: the caller's instance keeps its state. One already calibrated is used as it is, unless its statistics
    belong to another model (or to this one before pruning changed its widths) and ``calibration_data`` is given:
    then a copy is measured on ``model`` too. Statistics of this very model taken before its weights changed are not
    detected: pass an uncalibrated importance (and the data) to measure the current weights.

    Freezing covers every coupled channel: for each dependency of the group, the entries of that layer's parameters
    that belong to the frozen root channels (mapped through ``root_idxs`` -> ``idxs``): out-channel dependencies
    freeze conv / linear weight rows and bias entries (and per-channel extra parameters such as NF-Net ``gain``),
    BatchNorm / GroupNorm / InstanceNorm / LayerNorm / PReLU weight and bias entries; in-channel dependencies freeze
    the columns ``weight[:, c]`` of conv / linear layers (the right column of the right group for grouped convs);
    depthwise convs freeze the channel's rows in both directions. Buffers (BatchNorm running statistics) are not
    frozen.

    Frozen entries stay bit-identical through any optimiser (momentum, weight decay, Adam): their gradient is zeroed
    by tensor hooks (``param.register_hook``), and their saved values are written back in place before every forward
    of the module that owns them (a forward pre-hook, under ``no_grad``) and once more on exit. Parameters stay the
    same objects (optimisers keep working); on exit, also through an exception, every hook is removed. The model's
    training mode (per module) is left as it was.

    Args:
        model: the network to fine-tune.
        importance: a Torch-Pruning ``Importance`` instance, class or registry name (``"conditional-entropy"``).
        fraction: the share of each group's channels to freeze, in ``[0, 1]``.
        example_inputs: inputs the model runs on (for the dependency graph); required.
        calibration_data: batches (``(input, target)`` for label-aware criteria) to measure a data-driven
            importance that is not calibrated (or whose statistics belong to another model).
        ignored_layers: layers (with their submodules) that root no group; ``None`` = the task heads.
        calibration_batches: read at most this many batches of ``calibration_data``.

    Yields:
        :class:`FrozenChannels` (``.frozen``, ``.masks``, ``.restore()``).

    Raises:
        ValueError: ``fraction`` outside ``[0, 1]``, no ``example_inputs``, a bad ``calibration_batches``, an
            ignored layer that is not in the model, or a data-driven importance that is not calibrated and got no
            ``calibration_data`` (raised when called, before anything is changed).
        StaleStatisticsError: (on entry) a calibrated importance whose statistics do not fit ``model``, and no
            ``calibration_data`` to measure it again.
    """
    fraction = _check_fraction(fraction)
    if example_inputs is None:
        raise ValueError("example_inputs is required: inputs the model runs on, to build the dependency graph")
    imp = create_importance(importance)
    needs = requirements(imp)
    if needs.data and calibration_data is None and not getattr(imp, "calibrated", False):
        raise ValueError(f"{type(imp).__name__} needs data and is not calibrated: pass calibration_data= (an iterable "
                         "of (input, target) batches), or calibrate it first with imp.calibrate(model, loader)")
    modules = set(model.modules())
    if ignored_layers is None:
        heads = list(task_heads(model))
    else:
        heads = list(ignored_layers)
        for m in heads:
            if m not in modules:
                raise ValueError(f"ignored layer {type(m).__name__} is not a module of the model")
    ignored = list(dict.fromkeys(sub for m in heads for sub in m.modules()))
    if calibration_batches is not None and (isinstance(calibration_batches, bool)
                                            or not isinstance(calibration_batches, int) or calibration_batches < 1):
        raise ValueError(f"calibration_batches must be a positive integer or None, got {calibration_batches!r}")
    return _frozen(model, imp, fraction, example_inputs, calibration_data, calibration_batches, ignored)


@contextmanager
def _frozen(model: nn.Module, imp: Any, fraction: float, example_inputs: Any, calibration_data: Iterable | None,
            calibration_batches: int | None, ignored: list[nn.Module]) -> Iterator[FrozenChannels]:
    state = FrozenChannels()
    if fraction > 0:
        state = _select(model, imp, fraction, example_inputs, calibration_data, calibration_batches, ignored)
    owned = {id(p): (p, mask, values) for p, mask, values in state._saved}
    handles = []
    try:
        for param, mask, _ in state._saved:
            if param.requires_grad:
                handles.append(param.register_hook(lambda grad, m=mask: grad.masked_fill(m, 0)))
        for module in model.modules():
            mine = [owned[id(p)] for p in module.parameters(recurse=False) if id(p) in owned]
            if mine:
                handles.append(module.register_forward_pre_hook(_restoring_hook(mine)))
        yield state
    finally:
        for handle in handles:
            handle.remove()
        state.restore()


def _restoring_hook(entries: list[tuple[nn.Parameter, Tensor, Tensor]]):
    def hook(module: nn.Module, args: Any) -> None:
        with torch.no_grad():
            for param, mask, values in entries:
                _write_back(param, mask, values)
    return hook
