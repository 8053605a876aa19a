"""Reading calibration batches: ``(inputs, targets)`` of any batch layout, moved to the model's device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .errors import CalibrationError

__all__ = ["split_batch", "model_device", "to_device", "call_model", "first_examples", "batch_size", "INPUT_KEYS",
           "TARGET_KEYS"]

INPUT_KEYS = ("input", "inputs", "image", "images", "pixel_values", "x")
TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def split_batch(batch: Any) -> tuple[Any, Tensor | None]:
    """``(inputs, targets)`` of a batch that is a tensor, an ``(input, target, ...)`` sequence or a dict
    (inputs under one of ``input(s)``, ``image(s)``, ``pixel_values``, ``x``; targets under ``target(s)``,
    ``label(s)``, ``y``)."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        if inputs is None:
            raise CalibrationError(f"dict batch has none of the input keys {INPUT_KEYS}: {sorted(batch)}")
        return inputs, next((batch[k] for k in TARGET_KEYS if k in batch), None)
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 0:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise CalibrationError(f"cannot read a batch of type {type(batch).__name__}: give tensors, tuples or dicts")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def to_device(x: Any, device: torch.device | str) -> Any:
    """``x`` (a tensor, or dicts / lists / tuples of them) on ``device``; other values as they are."""
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``: a dict is passed as keyword arguments, a tuple / list as positional ones."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def first_examples(x: Any, n: int = 1) -> Any:
    """The first ``n`` examples of batched inputs (every tensor's leading dimension cut to ``n``)."""
    if isinstance(x, Tensor):
        return x[:n]
    if isinstance(x, Mapping):
        return {k: first_examples(v, n) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(first_examples(v, n) for v in x)
    return x


def batch_size(inputs: Any) -> int | None:
    """The leading dimension of the first tensor in ``inputs`` (a tensor, or dicts / lists / tuples of them)."""
    if isinstance(inputs, Tensor):
        return inputs.shape[0] if inputs.dim() else None
    if isinstance(inputs, (tuple, list)) and inputs:
        return batch_size(inputs[0])
    if isinstance(inputs, Mapping) and inputs:
        return batch_size(next(iter(inputs.values())))
    return None
