"""Exact split and concat widths for Torch-Pruning's dependency graph, where its own inference fails.

Splits: Torch-Pruning 1.6 reads a split's sizes from ``grad_fn._saved_self_sizes``, which current PyTorch calls
``_saved_self_sym_sizes``; it then falls back to inferring each piece's width from its consumers, which goes wrong
when a piece feeds a concat (``x.split(16, 1)`` of 32 channels comes out as pieces of 32 and 16, and the group of
the split's producer addresses channels that do not exist); and it gives the i-th consumer of the split the i-th
piece, which is wrong when one piece feeds two consumers (a residual block inside a CSP stage). Here the piece
widths come from the autograd node (the saved sizes, or the saved split size and the input's width) and each
consumer gets the piece its autograd edge reads (``output_nr``).

Concats: Torch-Pruning 1.6 maps channel indices through every ``torch.cat`` on dim 1 using the widths of the
inputs, which it infers by walking back through the graph to the nearest layer. The walk gives up (``None``) on
some common blocks: the residual add inside a CSP stage of CSP-Darknet, a class-token ``nn.Parameter``
concatenated to the patch tokens (CoaT). When the concat's output width is known, Torch-Pruning then computes
``sum(widths)`` and the graph build fails with ``TypeError: unsupported operand type(s) for +: 'int' and
'NoneType'``. Here the widths come from the tensors themselves: :func:`trace_recording_concats` watches the forward
pass that Torch-Pruning traces (a ``TorchFunctionMode``, thread-local) and stores, on each concat node, the sizes of
its inputs along dim 1. A concat whose widths Torch-Pruning cannot infer gets the recorded ones, so its index
mapping is exact; a dim-1 concat of 3-d ``(batch, tokens, channels)`` tensors joins tokens, not channels, and gets
no channel mapping; a concat that was not recorded keeps Torch-Pruning's own rule for unknown widths (no index
mapping), and ``prune()`` checks the forward pass.

Reshapes: a reshape whose width Torch-Pruning infers as 0 (ShuffleNet's channel shuffle) makes its index mapping
divide by zero and the graph build fail; here no channel index crosses it (the group stops there).

Every function here has the signature of the Torch-Pruning function it repairs, with that original first;
:mod:`.patching` installs them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch_pruning import ops
from torch_pruning.dependency import shape_infer
from torch_pruning.dependency.index_mapping import _SplitIndexMapping

__all__ = ["trace_recording_concats", "init_with_exact_splits", "split_with_exact_pieces",
           "concat_with_recorded_widths", "reshape_or_barrier", "no_channels"]

_CONCATS = (torch.cat, torch.concat, torch.concatenate)
_TOKENS = "tokens"  # recorded for a dim-1 concat of (batch, tokens, channels) tensors
_RECORDED = "recorded_concat_widths"  # attribute set on Torch-Pruning's concat nodes


class _ConcatRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.widths: dict[Any, list[int] | str] = {}  # autograd node of a concat -> input widths along dim 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONCATS and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            tensors = args[0] if args else kwargs["tensors"]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            if dim % out.ndim == 1:
                self.widths[out.grad_fn] = _TOKENS if out.ndim == 3 else [t.shape[1] for t in tensors]
        return out


def trace_recording_concats(original, graph, *args, **kwargs):
    """``DependencyGraph._trace``: trace with the concat recorder on, then store the recorded widths on the concat
    nodes (nothing outlives the graph)."""
    recorder = _ConcatRecorder()
    with recorder:
        module2node = original(graph, *args, **kwargs)
    for node in module2node.values():
        if node.type == ops.OPTYPE.CONCAT and node.grad_fn in recorder.widths:
            setattr(node, _RECORDED, recorder.widths[node.grad_fn])
    return module2node


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


def _pieces(node) -> tuple[list[int], list[int | None]] | None:
    """(piece start offsets, the piece each consumer reads) of a split node, or None."""
    widths = _split_widths(node.grad_fn) if node.type == ops.OPTYPE.SPLIT else None
    if widths is None:
        return None
    return [sum(widths[:i]) for i in range(len(widths) + 1)], [_piece(o, node.grad_fn) for o in node.outputs]


def init_with_exact_splits(original, graph) -> None:
    """``shape_infer.init_shape_information``: then the exact piece widths of every split, per consumer."""
    original(graph)
    for node in graph.module2node.values():
        found = _pieces(node)
        if found is not None and None not in found[1]:  # widths per consumer, in Torch-Pruning's order
            starts, read = found
            node.module.split_sizes = [starts[k + 1] - starts[k] for k in read]
            node.module.offsets = starts


def split_with_exact_pieces(original, graph, split_node) -> None:
    """``index_mapping.update_split_index_mapping``: then each consumer maps to the piece it reads."""
    original(graph, split_node)
    found = _pieces(split_node)
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


def concat_with_recorded_widths(original, graph, cat_node) -> None:
    """``index_mapping.update_concat_index_mapping``: widths Torch-Pruning cannot infer come from the trace."""
    if cat_node.type == ops.OPTYPE.CONCAT:
        widths = cat_node.module.concat_sizes
        if widths is None:
            widths = [shape_infer.infer_channels_between(graph, n, cat_node) for n in cat_node.inputs]
            if None in widths:
                recorded = getattr(cat_node, _RECORDED, None)
                if isinstance(recorded, list) and len(recorded) == len(cat_node.inputs):
                    widths = recorded
            cat_node.module.concat_sizes = widths
        if None in widths:
            return  # Torch-Pruning's rule for unknown widths: no index mapping
    original(graph, cat_node)


def reshape_or_barrier(original, graph, reshape_node) -> None:
    """``index_mapping.update_reshape_index_mapping``: a width inferred as 0 stops groups instead of failing."""
    try:
        original(graph, reshape_node)
    except ZeroDivisionError:  # a width inferred as 0 (ShuffleNet's channel shuffle): no index crosses it
        for near in (*reshape_node.inputs, *reshape_node.outputs):
            for dep in (*reshape_node.dependencies, *near.dependencies):
                if {dep.source, dep.target} == {reshape_node, near}:
                    dep.index_mapping[0] = no_channels


def no_channels(idxs: list) -> list:
    """Index mapping across a reshape whose channel correspondence is unknown: the group stops there (``prune()``
    then finds that pruning it breaks the forward pass and keeps it)."""
    return []
