"""Calling a model on example inputs of any layout, and the structure of what it returns."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..calibration.batches import batch_size, call_model

__all__ = ["forward", "batch_size", "output_signature"]


def forward(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` without gradients; a dict is passed as keyword arguments, a tuple / list as positional."""
    with torch.no_grad():
        return call_model(model, inputs)


def output_signature(out: Any, batch: int | None) -> Any:
    """Structure of an output: containers, keys and tensor shapes (leading dim ignored unless it is the batch,
    so that a detector's variable number of boxes does not count as a change)."""
    if isinstance(out, torch.Tensor):
        shape = tuple(out.shape)
        return ("T", shape if shape[:1] == (batch,) else shape[1:])
    if isinstance(out, dict):
        return ("D", tuple((k, output_signature(v, batch)) for k, v in out.items()))
    if isinstance(out, (list, tuple)):
        return ("L", type(out).__name__, len(out), tuple(output_signature(v, batch) for v in out[:1]) if out else ())
    return ("O", type(out).__name__)
