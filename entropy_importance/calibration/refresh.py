"""What each criterion needs from data, and how it is brought up to date with the current model.

:data:`REQUIREMENTS` is the one table that says it, for our criteria and Torch-Pruning's: the registry's
``needs_data`` / ``needs_labels`` / ``needs_grad``, ``prune()``, :class:`~entropy_importance.EntropyPruner`, the
CLI and the pipelines all read it through :func:`requirements`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from .batches import model_device, split_batch, to_device
from .errors import CalibrationError
from .observe import DataDrivenImportance

__all__ = ["Requirements", "REQUIREMENTS", "requirements", "refresh_importance", "reusable_batches"]


@dataclass(frozen=True)
class Requirements:
    """What scoring with a criterion needs: images (``data``), class labels, gradients left by a backward pass;
    ``refresh(importance, model, data, max_batches, device)`` measures it on the current model."""

    data: bool = False
    labels: bool = False
    grad: bool = False
    refresh: Callable | None = None


def _calibrate(imp: DataDrivenImportance, model: nn.Module, data: Iterable, max_batches, device) -> None:
    imp.calibrate(model, data, max_batches=max_batches, device=device)


def _batches(data: Iterable, max_batches: int | None, device) -> list[tuple]:
    batches = [(to_device(x, device), y) for x, y in map(split_batch, itertools.islice(data, max_batches))]
    if not batches:
        raise CalibrationError("calibration data yielded no batches: give a non-empty loader")
    return batches


def _gradients(imp: tp.importance.Importance, model: nn.Module, data: Iterable, max_batches, device) -> None:
    """Taylor criteria read ``param.grad``: leave the summed cross-entropy gradient of the batches. Parameters
    frozen by the caller (``requires_grad=False``) get a gradient too, for the duration of the measurement."""
    training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()  # no BatchNorm running-statistics update while measuring
    model.zero_grad(set_to_none=True)
    try:
        for p in frozen:
            p.requires_grad_(True)
        for x, y in _batches(data, max_batches, device):
            if y is None:
                raise CalibrationError(f"{type(imp).__name__} needs class labels: give (input, target) batches")
            F.cross_entropy(model(x), torch.as_tensor(y, device=x.device)).backward()
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(training)


def _activations(imp: tp.importance.ActivationImportance, model: nn.Module, data: Iterable, max_batches,
                 device) -> None:
    """Torch-Pruning's ActivationImportance keeps the statistics of the last forward: run one over all batches."""
    x = torch.cat([x for x, _ in _batches(data, max_batches, device)])
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), imp.compute_importance(model):
            model(x)
    finally:
        model.train(training)


#: criterion type -> what it needs (first match along the type's MRO); types not listed need nothing.
REQUIREMENTS: dict[type, Requirements] = {
    DataDrivenImportance: Requirements(data=True, refresh=_calibrate),
    tp.importance.GroupTaylorImportance: Requirements(data=True, labels=True, grad=True, refresh=_gradients),
    tp.importance.ActivationImportance: Requirements(data=True, refresh=_activations),
}


def requirements(importance: tp.importance.Importance | type) -> Requirements:
    """What ``importance`` (an instance or a class) needs; label-aware data-driven criteria say so with their
    ``needs_labels`` attribute."""
    cls = importance if isinstance(importance, type) else type(importance)
    found = next((REQUIREMENTS[c] for c in cls.__mro__ if c in REQUIREMENTS), Requirements())
    if found.data and getattr(importance, "needs_labels", False) and not found.labels:
        found = Requirements(data=True, labels=True, grad=found.grad, refresh=found.refresh)
    return found


def reusable_batches(data: Iterable | None, max_batches: int | None) -> Iterable | None:
    """``data`` itself when it can be iterated again (a list, a DataLoader); a one-shot iterator or generator is
    read once, up to ``max_batches`` batches, and kept, since pruning in several steps calibrates several times.

    Raises:
        CalibrationError: a one-shot iterator without ``max_batches`` (keeping all of it could exhaust memory).
    """
    if data is None or not isinstance(data, Iterator):
        return data
    if max_batches is None:
        raise CalibrationError(
            "calibration_data is a one-shot iterator (a generator?) and is read again at every pruning step: "
            "pass a list or a DataLoader, or set calibration_batches= so that the batches needed are kept")
    return list(itertools.islice(data, max_batches))


def refresh_importance(importance: tp.importance.Importance, model: nn.Module, data: Iterable | None,
                       max_batches: int | None = None, device: torch.device | str | None = None) -> bool:
    """Recompute what ``importance`` measures on data (our statistics, Torch-Pruning's gradients or activations)
    for the current ``model``; returns False for data-free criteria, which need nothing."""
    needs = requirements(importance)
    if needs.refresh is None:
        return False
    if data is None:
        raise ValueError(f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)")
    needs.refresh(importance, model, data, max_batches, device if device is not None else model_device(model))
    return True
