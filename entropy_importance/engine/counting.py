"""Parameter, MAC and width reports (thop and Torch-Pruning's own counter, side by side)."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["count_params", "count_macs", "stage_modules", "stage_widths", "tp_macs"]


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
    counter fails (some detectors trip it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(tp.utils.count_ops_and_params(model, example_inputs)[0])
    except Exception:  # noqa: BLE001 - MACs are then unknown, which callers handle
        return None


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
    widths: dict[str, int] = {}
    handles = []

    def hook_for(name):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
                widths[name] = int(output.shape[1] if output.dim() == 4 else output.shape[-1])
        return hook

    for name, module in stage_modules(model):
        handles.append(module.register_forward_hook(hook_for(name)))
    training = model.training
    try:
        model.eval()
        model(example_inputs)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return widths
