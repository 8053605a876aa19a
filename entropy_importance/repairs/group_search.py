"""A group search for Torch-Pruning that follows each ``(layer, pruning function, index)`` once.

Torch-Pruning 1.6 follows a dependency again whenever it arrives with an index list that differs from the ones
already recorded for that layer, even when every index in it was seen before, and follows indices past a layer's
width (a flatten mapping multiplies them on every pass around a cycle of reshapes). Where paths fork and merge many
times (RexNet's partial residual adds, EfficientViT-M, EfficientFormerV2, FocalNet) forming one group does not
finish in minutes. Every index mapping (concat, split, flatten, slice, ...) maps each index on its own, so following
only the indices not seen before at a ``(layer, pruning function)`` reaches the same indices at every layer; each
keeps the root index it first arrived with, which is Torch-Pruning's choice too where the layer-to-root
correspondence is one to one. Indices past a layer's width (with which Torch-Pruning's pruning fails with
``IndexError``) are dropped. The cost is bounded by the number of (layer, function, index), and the search checks
the per-group deadline of :func:`~.repairs` as it goes (in any thread: no signals).
tests/test_group_search.py compares the groups with Torch-Pruning's on DenseNet, Res2Net and DPN.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from numbers import Number

import torch
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning._helpers import GroupItem, _HybridIndex, to_plain_idxs, to_root_idxs
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.pruner import function

from .state import GroupFormationTimeout, group_deadline

__all__ = ["get_pruning_group"]

_WIDEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> its widest layer when first asked


class _ChannelBound:
    """How many channels a ``(node, pruning function)`` of the graph has: the layer's own count where Torch-Pruning's
    pruner for it knows it, else the widest layer of the graph (an index past it is no channel of anything)."""

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.graph, self.known = graph, {}

    @property
    def widest(self) -> int:
        """Only needed once the search reaches a node without a known width; a walk over the whole graph, once per
        graph (pruning only narrows layers, so the first value stays an upper bound)."""
        widest = _WIDEST.get(self.graph)
        if widest is None:
            nodes = self.graph.module2node.values()
            widths = [self._count(node.module, out) for node in nodes for out in (True, False)]
            widest = _WIDEST[self.graph] = max((w for w in widths if w is not None), default=0)
        return widest

    def _count(self, module, out: bool) -> int | None:
        if not isinstance(module, torch.nn.Module):
            return None
        pruner = self.graph.get_pruner_of_module(module)
        try:
            n = pruner.get_out_channels(module) if out else pruner.get_in_channels(module)
        except Exception:  # noqa: BLE001 - pruners of functional nodes do not know their widths
            return None
        return n if isinstance(n, int) and n > 0 else None

    def __call__(self, node, fn) -> int:
        key = (node, fn)
        if key not in self.known:
            out = fn is function.prune_depthwise_conv_out_channels or self.graph.is_out_channel_pruning_fn(fn)
            self.known[key] = self._count(node.module, out) or self.widest
        return self.known[key]


def get_pruning_group(original, self: tp.DependencyGraph, module: torch.nn.Module, pruning_fn,
                      idxs: Sequence[int]) -> Group:
    """``DependencyGraph.get_pruning_group`` (same arguments, same group wherever Torch-Pruning's is valid) with a
    search that visits each channel once (see the module docstring). ``original`` is not called."""
    if module not in self.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
    deadline = group_deadline()
    if isinstance(module, ops.TORCH_CONV) and module.groups == module.out_channels and module.out_channels > 1:
        pruning_fn = function.prune_depthwise_conv_out_channels
    start = [_HybridIndex(idx=i, root_idx=i) for i in ([idxs] if isinstance(idxs, Number) else idxs)]
    index_mapping.update_index_mapping(self)
    root = self.module2node[module]
    found = Group()
    found.add_dep(Dependency(pruning_fn, pruning_fn, source=root, target=root), start)
    seen: dict[tuple, set[int]] = {(root, pruning_fn): {i.idx for i in start}}
    bound = _ChannelBound(self)
    todo = [(root, pruning_fn, start)]
    while todo:
        if deadline is not None and time.monotonic() > deadline:
            raise GroupFormationTimeout(f"forming the group of {self._module2name.get(module, module)} took longer "
                                        "than the group time limit")
        node, fn, indices = todo.pop()
        for dep in node.dependencies:
            if not dep.is_triggered_by(fn):
                continue
            mapped = indices
            for mapping in dep.index_mapping:
                if mapping is not None:
                    mapped = mapping(mapped)
            known = seen.setdefault((dep.target, dep.handler), set())
            fresh, limit = [], bound(dep.target, dep.handler)
            for i in mapped:  # index mappings act on each index alone: one seen here was already followed on
                if i.idx not in known and 0 <= i.idx < limit:
                    known.add(i.idx)
                    fresh.append(i)
            if fresh:
                found.add_dep(dep, fresh)
                todo.append((dep.target, dep.handler, fresh))
    group = Group()  # one item per (layer, pruning function), indices merged, ignored parameters left out
    for dep, indices in found.items:
        if isinstance(dep.target.module, torch.nn.Parameter) and any(
                dep.target.module is p for p in self.ignored_params):
            continue
        group.add_and_merge(dep, indices)
    group._DG = self
    for k, (dep, indices) in enumerate(group.items):
        group[k] = GroupItem(dep, to_plain_idxs(indices))
        group[k].root_idxs = to_root_idxs(indices)
    return group
