"""Parameter, MAC and width reports (thop and Torch-Pruning's own counter, side by side).

:func:`measured_forward` is what the engine uses: one forward pass that gives the output, Torch-Pruning's MAC count
and the stage widths at once, on the model itself (no copy), leaving nothing behind on it.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.utils import op_counter

from ..calibration.batches import call_model

__all__ = ["count_params", "count_macs", "stage_modules", "stage_widths", "tp_macs", "measured_forward", "Measured"]

#: what ``op_counter.add_flops_counting_methods`` / ``start_flops_count`` set on modules and
#: ``stop_flops_count`` does not take away (the bound methods and the batch counter of the top module, the backups
#: of ``__flops__`` / ``__params__`` a module already had)
_COUNTER_LEFTOVERS = ("start_flops_count", "stop_flops_count", "reset_flops_count", "compute_average_flops_cost",
                      "__batch_counter__", "accumulate_flops", "__ptflops_backup_flops__", "__ptflops_backup_params__")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of one forward pass, by two counters.

    ``"thop"``: thop's hooks. ``"tp"``: ``tp.utils.count_ops_and_params``, the counter of Torch-Pruning's
    speed-up tables. They agree on conv and linear layers; measured on single layers (thop 0.1.1, TP 1.6.1):
    BatchNorm is 2 ops per element in thop and 1 in TP, ReLU and max-pooling are 0 in thop and 1 per element in
    TP. Both run on deep copies: the model is not touched.
    """
    import thop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thop_macs, _ = thop.profile(copy.deepcopy(model), inputs=(example_inputs,), verbose=False)
        tp_macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    return {"thop": int(thop_macs), "tp": int(tp_macs)}


def tp_macs(model: nn.Module, example_inputs) -> int | None:
    """Torch-Pruning's MAC count (``tp.utils.count_ops_and_params``) of one forward pass, or None where that
    counter fails (some detectors trip it). Counts on a deep copy, as Torch-Pruning does; :func:`measured_forward`
    gives the same number without the copy."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(tp.utils.count_ops_and_params(model, example_inputs)[0])
    except Exception:  # noqa: BLE001 - MACs are then unknown, which callers handle
        return None


@dataclass
class Measured:
    """What one :func:`measured_forward` pass gives: the model's output, Torch-Pruning's MAC count (None where its
    counter fails or was not asked for) and the :func:`stage_widths`."""

    output: Any
    macs: int | None
    widths: dict[str, int] = field(default_factory=dict)


@contextmanager
def _tp_counter(model: nn.Module) -> Iterator[dict]:
    """Torch-Pruning's MAC counter (the machinery of ``tp.utils.count_ops_and_params``: its hooks, its batch counter,
    its sum over modules) on ``model`` itself for the forward passes inside the block; ``result["macs"]`` holds the
    count on a normal exit. The counter's hooks, counters and methods are taken off ``model`` on any exit."""
    result: dict[str, int | None] = {"macs": None}
    try:
        op_counter.add_flops_counting_methods(model)
        model.start_flops_count(ost=sys.stdout, verbose=False, ignore_list=[])
        yield result
        # compute_average_flops_cost() without its per-module parameter counts, which the MACs do not need
        for m in model.modules():
            m.accumulate_flops = op_counter.accumulate_flops.__get__(m)
        result["macs"] = int(model.accumulate_flops({}) / model.__batch_counter__)
    finally:
        try:
            op_counter.remove_batch_counter_hook_function(model)
            model.apply(op_counter.remove_flops_counter_hook_function)
            model.apply(op_counter.remove_flops_counter_variables)
        finally:
            for m in model.modules():
                for name in _COUNTER_LEFTOVERS:
                    m.__dict__.pop(name, None)


@contextmanager
def _width_hooks(model: nn.Module) -> Iterator[dict[str, int]]:
    """Output channels (4-D outputs) or features (3-D token outputs) of each :func:`stage_modules` entry, filled by
    the forward passes inside the block."""
    widths: dict[str, int] = {}

    def hook_for(name):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
                widths[name] = int(output.shape[1] if output.dim() == 4 else output.shape[-1])
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in stage_modules(model)]
    try:
        yield widths
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def measured_forward(model: nn.Module, inputs: Any, macs: bool = True, widths: bool = True) -> Measured:
    """``model(inputs)`` (a dict as keyword arguments, a tuple / list as positional ones) in eval mode, counting
    Torch-Pruning's MACs (``macs``: the number ``tp.utils.count_ops_and_params`` gives, counted on ``model`` itself
    instead of a deep copy) and the :func:`stage_widths` (``widths``) on the way. Nothing stays on ``model``: the
    counter's hooks and attributes are removed and the training modes restored.

    Where the pass fails with the counter on, it runs once more without it: if the model alone runs, the counter
    was at fault (``macs`` None), else the model's error is raised.
    """
    training = [m for m in model.modules() if m.training]
    try:
        for m in training:
            m.training = False
        with _width_hooks(model) if widths else nullcontext({}) as found:
            if macs:
                try:
                    with warnings.catch_warnings(), _tp_counter(model) as counted:
                        warnings.simplefilter("ignore")
                        output = call_model(model, inputs)
                    return Measured(output, counted["macs"], dict(found))
                except Exception:  # noqa: BLE001 - the counter's or the model's: the plain pass below tells
                    found.clear()
            output = call_model(model, inputs)
            return Measured(output, None, dict(found))
    finally:
        for m in training:
            m.training = True


def stage_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose output widths summarise the network: timm's ``feature_info``, else the children of
    ``features`` (torchvision VGG/MobileNet/DenseNet/EfficientNet), else the top-level children."""
    named = dict(model.named_modules())
    info = getattr(model, "feature_info", None)
    names = []
    if info is not None:
        try:
            names = [f["module"] for f in (info.info if hasattr(info, "info") else info)]
        except (TypeError, KeyError):
            names = []
    names = [n for n in names if n in named]
    if names:
        return [(n, named[n]) for n in names]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [(f"features.{n}", m) for n, m in features.named_children()]
    return list(model.named_children())


@torch.no_grad()
def stage_widths(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Output channels (4-D outputs) or features (3-D token outputs) of each :func:`stage_modules` entry."""
    return measured_forward(model, example_inputs, macs=False).widths
