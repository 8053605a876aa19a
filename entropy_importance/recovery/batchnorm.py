"""BatchNorm statistics re-estimated on calibration data (adaptive BN, Li et al., EagleEye, ECCV 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ..calibration.batches import call_model

__all__ = ["reestimate_batchnorm", "batchnorm_layers"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def reestimate_batchnorm(model: nn.Module, inputs: Sequence[Any]) -> int:
    """Replace every BatchNorm layer's running mean and variance by their cumulative average over ``inputs`` (a
    sequence of model inputs on the model's device): the BatchNorm layers run in train mode with ``momentum=None``,
    every other module in eval mode (no dropout), under ``torch.no_grad``. Each module's mode and momentum are
    restored afterwards, and on an error the running statistics too. Returns how many layers were re-estimated."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    saved = [(m, m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x in inputs:
                call_model(model, x)
    except BaseException:
        with torch.no_grad():
            for m, _, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, momentum, *_ in saved:
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(layers)
