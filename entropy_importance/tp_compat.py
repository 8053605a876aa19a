"""Exact split and concat widths for Torch-Pruning's dependency graph, where its own inference fails.

Splits: Torch-Pruning 1.6 reads a split's sizes from ``grad_fn._saved_self_sizes``, which current PyTorch calls
``_saved_self_sym_sizes``; it then falls back to inferring each piece's width from its consumers, which goes wrong
when a piece feeds a concat (``x.split(16, 1)`` of 32 channels comes out as pieces of 32 and 16, and the group of
the split's producer addresses channels that do not exist); and it gives the i-th consumer of the split the i-th
piece, which is wrong when one piece feeds two consumers (a residual block inside a CSP stage). Within
:func:`exact_widths` the piece widths come from the autograd node (the saved sizes, or the saved split size and
the input's width) and each consumer gets the piece its autograd edge reads (``output_nr``).

Concats: Torch-Pruning 1.6 maps channel indices through every ``torch.cat`` on dim 1 using the widths of
the inputs, which it infers by walking back through the graph to the nearest layer. The walk gives up (``None``)
on some common blocks: the residual add inside a CSP stage of CSP-Darknet, a class-token ``nn.Parameter``
concatenated to the patch tokens (CoaT). When the concat's output width is known, Torch-Pruning then computes
``sum(widths)`` and the graph build fails with ``TypeError: unsupported operand type(s) for +: 'int' and
'NoneType'``.

Here the widths come from the tensors themselves: :func:`record_concat_widths` watches the forward pass that
Torch-Pruning traces (a ``TorchFunctionMode``) and keeps, for each concat's autograd node, the sizes of its inputs
along dim 1. Within :func:`exact_widths`, a concat whose widths Torch-Pruning cannot infer gets the recorded
ones, so its index mapping is exact; a dim-1 concat of 3-d ``(batch, tokens, channels)`` tensors joins tokens,
not channels, and gets no channel mapping; a concat that was not recorded keeps Torch-Pruning's own rule for
unknown widths (no index mapping), and ``prune()`` checks the forward pass after every group.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from numbers import Number
from typing import Any

import torch
import torch_pruning as tp
from torch.overrides import TorchFunctionMode
from torch_pruning import ops
from torch_pruning._helpers import GroupItem, _HybridIndex, to_plain_idxs, to_root_idxs
from torch_pruning.dependency import index_mapping, shape_infer
from torch_pruning.dependency.dependency import Dependency
from torch_pruning.dependency.group import Group
from torch_pruning.dependency.index_mapping import _SplitIndexMapping
from torch_pruning.pruner import function

__all__ = ["GroupFormationTimeout", "exact_widths", "extra_parameters_follow", "group_formation_time_limit",
           "record_concat_widths", "visit_each_index_once"]

_CONCATS = (torch.cat, torch.concat, torch.concatenate)
_TOKENS = "tokens"  # recorded for a dim-1 concat of (batch, tokens, channels) tensors
_recorded: dict[Any, list[int] | str] = {}  # autograd node of a concat -> input widths along dim 1


class _ConcatRecorder(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONCATS and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if dim % out.ndim == 1:
                _recorded[out.grad_fn] = _TOKENS if out.ndim == 3 else [t.shape[1] for t in tensors]
        return out


@contextmanager
def record_concat_widths() -> Iterator[None]:
    """Record the dim-1 widths of every concat run inside the block (wrap the dependency-graph build in it)."""
    with _ConcatRecorder():
        yield


def _split_widths(grad_fn) -> list[int] | None:
    """Piece widths of a channel split (dim 1 of a 2-d or 4-d tensor) from its autograd node (``split``,
    ``split_with_sizes``, ``chunk``)."""
    dim, sizes = getattr(grad_fn, "_saved_dim", None), getattr(grad_fn, "_saved_self_sym_sizes", None)
    if dim is None or sizes is None or len(sizes) == 3 or dim % len(sizes) != 1:
        return None
    if hasattr(grad_fn, "_saved_split_sizes"):
        return [int(w) for w in grad_fn._saved_split_sizes]
    step, total = int(getattr(grad_fn, "_saved_split_size", 0)), int(sizes[1])
    return [min(step, total - start) for start in range(0, total, step)] if step > 0 else None


def _piece(consumer, split_grad_fn) -> int | None:
    """Which piece of the split a consumer node reads: the ``output_nr`` of its autograd edge to the split."""
    for fn, output_nr in getattr(consumer.grad_fn, "next_functions", ()) or ():
        if fn is split_grad_fn:
            return int(output_nr)
    return None


@contextmanager
def exact_widths() -> Iterator[None]:
    """Within the block (or the decorated function), splits get exact piece widths and index mappings (a piece
    may feed several consumers), and concats whose input widths Torch-Pruning cannot infer use the widths recorded
    by :func:`record_concat_widths`. Patches module-level functions of Torch-Pruning and keeps the recorded
    autograd nodes alive until the block ends: not thread-safe."""
    original = index_mapping.update_concat_index_mapping
    original_init, original_split = shape_infer.init_shape_information, index_mapping.update_split_index_mapping
    original_reshape = index_mapping.update_reshape_index_mapping

    def pieces(node) -> tuple[list[int], list[int | None]] | None:
        widths = _split_widths(node.grad_fn) if node.type == ops.OPTYPE.SPLIT else None
        if widths is None:
            return None
        return [sum(widths[:i]) for i in range(len(widths) + 1)], [_piece(o, node.grad_fn) for o in node.outputs]

    def init_with_exact_splits(graph) -> None:
        original_init(graph)
        for node in graph.module2node.values():
            found = pieces(node)
            if found is not None and None not in found[1]:  # widths per consumer, in Torch-Pruning's order
                starts, read = found
                node.module.split_sizes = [starts[k + 1] - starts[k] for k in read]
                node.module.offsets = starts

    def split_with_exact_pieces(graph, split_node) -> None:
        original_split(graph, split_node)
        found = pieces(split_node)
        if found is None or not split_node.enable_index_mapping:
            return
        starts, read = found
        for out_node, k in zip(split_node.outputs, read, strict=True):
            if k is None:
                continue
            for dep in split_node.dependencies:
                if dep.target is out_node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=starts[k:k + 2], reverse=False)
            for dep in out_node.dependencies:
                if dep.target is split_node:
                    dep.index_mapping[0] = _SplitIndexMapping(offset=starts[k:k + 2], reverse=True)

    def guarded(graph, cat_node) -> None:
        if cat_node.type == ops.OPTYPE.CONCAT:
            widths = cat_node.module.concat_sizes
            if widths is None:
                widths = [shape_infer.infer_channels_between(graph, n, cat_node) for n in cat_node.inputs]
                if None in widths:
                    recorded = _recorded.get(cat_node.grad_fn)
                    if isinstance(recorded, list) and len(recorded) == len(cat_node.inputs):
                        widths = recorded
                cat_node.module.concat_sizes = widths
            if None in widths:
                return  # Torch-Pruning's rule for unknown widths: no index mapping
        original(graph, cat_node)

    def reshape_or_barrier(graph, reshape_node) -> None:
        try:
            original_reshape(graph, reshape_node)
        except ZeroDivisionError:  # a width inferred as 0 (ShuffleNet's channel shuffle): no index crosses it
            for near in (*reshape_node.inputs, *reshape_node.outputs):
                for dep in (*reshape_node.dependencies, *near.dependencies):
                    if {dep.source, dep.target} == {reshape_node, near}:
                        dep.index_mapping[0] = _no_channels

    patched = (guarded, split_with_exact_pieces, reshape_or_barrier, init_with_exact_splits)
    (index_mapping.update_concat_index_mapping, index_mapping.update_split_index_mapping,
     index_mapping.update_reshape_index_mapping, shape_infer.init_shape_information) = patched
    try:
        yield
    finally:
        (index_mapping.update_concat_index_mapping, index_mapping.update_split_index_mapping,
         index_mapping.update_reshape_index_mapping, shape_infer.init_shape_information) = (
            original, original_split, original_reshape, original_init)
        _recorded.clear()


def _no_channels(idxs: list) -> list:
    """Index mapping across a reshape whose channel correspondence is unknown: the group stops there (``prune()``
    then finds that pruning it breaks the forward pass and keeps it)."""
    return []


class GroupFormationTimeout(RuntimeError):
    """Torch-Pruning took longer than the limit to form one group (see :func:`group_formation_time_limit`)."""


@contextmanager
def group_formation_time_limit(seconds: float | None) -> Iterator[None]:
    """Within the block, ``DependencyGraph.get_pruning_group`` raises :class:`GroupFormationTimeout` after
    ``seconds``. On some graphs (RexNet, EfficientViT-M, EfficientFormerV2, FocalNet) Torch-Pruning 1.6 expands the
    indices of a flatten mapping again on every pass around the graph, and forming one group does not finish in
    minutes; a legitimate group takes well under a second on most models, and up to about 30 s for the
    split-attention groups of ResNeSt on a loaded 2-core CPU (``prune()``'s default limit is 60 s). Uses
    ``SIGALRM``: a no-op off the main thread or without ``setitimer`` (Windows), and when ``seconds`` is None."""
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    original = tp.DependencyGraph.get_pruning_group

    def on_alarm(signum, frame):
        raise GroupFormationTimeout(f"forming one group took longer than {seconds:g} s")

    def limited(self, module, pruning_fn, idxs):
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return original(self, module, pruning_fn, idxs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    tp.DependencyGraph.get_pruning_group = limited
    try:
        yield
    finally:
        tp.DependencyGraph.get_pruning_group = original


class _ChannelBound:
    """How many channels a ``(node, pruning function)`` of the graph has: the layer's own count where Torch-Pruning's
    pruner for it knows it, else the widest layer of the graph (an index past it is no channel of anything)."""

    def __init__(self, graph: tp.DependencyGraph) -> None:
        self.graph, self.known = graph, {}

    @functools.cached_property
    def widest(self) -> int:
        """Only needed once the search reaches a node without a known width; a walk over the whole graph."""
        nodes = self.graph.module2node.values()
        widths = [self._count(node.module, out) for node in nodes for out in (True, False)]
        return max((w for w in widths if w is not None), default=0)

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


def get_pruning_group(self: tp.DependencyGraph, module: torch.nn.Module, pruning_fn, idxs: Sequence[int]) -> Group:
    """``DependencyGraph.get_pruning_group`` (same arguments, same group wherever Torch-Pruning's is valid) with a
    search that follows each ``(layer, pruning function, index)`` once and drops indices past the layer's width.
    See :func:`visit_each_index_once`."""
    if module not in self.module2node:
        raise ValueError(f"Module {module} is not in the dependency graph.")
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


@contextmanager
def visit_each_index_once() -> Iterator[None]:
    """Within the block, ``tp.DependencyGraph.get_pruning_group`` is :func:`get_pruning_group`.

    Torch-Pruning 1.6 follows a dependency again whenever it arrives with an index list that differs from the ones
    already recorded for that layer, even when every index in it was seen before, and follows indices past a
    layer's width (a flatten mapping multiplies them on every pass around a cycle of reshapes). Where paths fork
    and merge many times (RexNet's partial residual adds, EfficientViT-M, EfficientFormerV2, FocalNet) forming one
    group does not finish in minutes. Every index mapping (concat, split, flatten, slice, ...) maps each index on
    its own, so following only the indices not seen before at a ``(layer, pruning function)`` reaches the same
    indices at every layer; each keeps the root index it first arrived with, which is Torch-Pruning's choice too
    where the layer-to-root correspondence is one to one. Indices past a layer's width (with which Torch-Pruning's
    pruning fails with ``IndexError``) are dropped. The cost is bounded by the number of (layer, function, index).
    tests/test_group_search.py compares the groups with Torch-Pruning's on DenseNet, Res2Net and DPN.
    """
    original = tp.DependencyGraph.get_pruning_group
    tp.DependencyGraph.get_pruning_group = get_pruning_group
    try:
        yield
    finally:
        tp.DependencyGraph.get_pruning_group = original


def _per_output_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters of a conv / linear layer besides ``weight`` and ``bias`` with one entry per output channel
    (timm's ``ScaledStdConv2d.gain``): Torch-Pruning's layer pruners only know ``weight`` and ``bias``."""
    if not isinstance(module, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)) or getattr(module, "transposed", False):
        return []
    out = module.weight.shape[0]
    return [(name, p) for name, p in module.named_parameters(recurse=False)
            if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == out]


@contextmanager
def extra_parameters_follow() -> Iterator[None]:
    """Within the block, pruning the output channels of a conv / linear layer also prunes its other per-channel
    parameters (:func:`_per_output_parameters`), so that a subclass such as timm's ``ScaledStdConv2d`` (NF-Nets)
    keeps a ``gain`` as wide as its weight. Patches ``Dependency.__call__`` of Torch-Pruning: not thread-safe."""
    original = Dependency.__call__

    def call(self, idxs):
        module = self.target.module
        extra = _per_output_parameters(module) if getattr(self.handler, "__name__", "") == "prune_out_channels" \
            else []
        before = module.weight.shape[0] if extra else 0
        result = original(self, idxs)
        if extra:
            drop = set(to_plain_idxs(list(idxs)))
            keep = torch.tensor([i for i in range(before) if i not in drop], dtype=torch.long)
            for name, p in extra:
                kept = p.detach().index_select(0, keep.to(p.device))
                setattr(module, name, torch.nn.Parameter(kept, requires_grad=p.requires_grad))
        return result

    Dependency.__call__ = call
    try:
        yield
    finally:
        Dependency.__call__ = original
