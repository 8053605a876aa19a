"""Parameters that Torch-Pruning 1.6 leaves behind when it prunes a layer, or cannot trace.

* Per-output-channel parameters of conv / linear subclasses besides ``weight`` and ``bias`` (timm's
  ``ScaledStdConv2d.gain`` in NF-Nets) are pruned with the weight, so that they stay as wide as it.
* A pruned layer's parameters keep their ``requires_grad`` (Torch-Pruning makes new ``nn.Parameter`` objects,
  which require gradients, so a frozen layer came back trainable).
* Tracing a frozen model (``requires_grad=False`` everywhere) builds no graph, since Torch-Pruning traces through
  autograd: during the trace every parameter requires gradients, and the flags are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch_pruning._helpers import to_plain_idxs

__all__ = ["per_output_parameters", "prune_with_extra_parameters", "trace_unfrozen", "all_parameters_trainable"]


def per_output_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters of a conv / linear layer besides ``weight`` and ``bias`` with one entry per output channel
    (timm's ``ScaledStdConv2d.gain``): Torch-Pruning's layer pruners only know ``weight`` and ``bias``."""
    if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or getattr(module, "transposed", False):
        return []
    out = module.weight.shape[0]
    return [(name, p) for name, p in module.named_parameters(recurse=False)
            if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == out]


def prune_with_extra_parameters(original, dep, idxs):
    """``Dependency.__call__``: prunes, then the layer's extra per-output-channel parameters follow (out-channel
    pruning, recognised by the handler's name since a dependency does not know its graph), and every parameter of
    the layer keeps its ``requires_grad``."""
    module = dep.target.module
    if not isinstance(module, nn.Module):
        return original(dep, idxs)
    flags = {name: p.requires_grad for name, p in module.named_parameters(recurse=False)}
    extra = per_output_parameters(module) if getattr(dep.handler, "__name__", "") == "prune_out_channels" else []
    before = module.weight.shape[0] if extra else 0
    result = original(dep, idxs)
    if extra:
        drop = set(to_plain_idxs(list(idxs)))
        keep = torch.tensor([i for i in range(before) if i not in drop], dtype=torch.long)
        for name, p in extra:
            setattr(module, name, nn.Parameter(p.detach().index_select(0, keep.to(p.device))))
    for name, p in module.named_parameters(recurse=False):
        if name in flags and p.requires_grad != flags[name]:
            p.requires_grad_(flags[name])
    return result


@contextmanager
def all_parameters_trainable(model: nn.Module) -> Iterator[None]:
    """Within the block every parameter of ``model`` requires gradients; the flags are restored on exit."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def trace_unfrozen(original, graph, model, *args, **kwargs):
    """``DependencyGraph._trace`` of a model whose parameters may be frozen."""
    with all_parameters_trainable(model):
        return original(graph, model, *args, **kwargs)
