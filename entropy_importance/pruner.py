"""A Torch-Pruning pruner that refreshes data-dependent criteria before every step."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from .calibration import CalibrationError, DataDrivenImportance, _to, model_device, split_batch

__all__ = ["EntropyPruner", "refresh_importance"]


def _calibrate(imp: DataDrivenImportance, model: nn.Module, data: Iterable, max_batches, device) -> None:
    imp.calibrate(model, data, max_batches=max_batches, device=device)


def _batches(data: Iterable, max_batches: int | None, device) -> list[tuple]:
    batches = [(_to(x, device), y) for x, y in map(split_batch, itertools.islice(data, max_batches))]
    if not batches:
        raise CalibrationError("calibration data yielded no batches: give a non-empty loader")
    return batches


def _gradients(imp: tp.importance.Importance, model: nn.Module, data: Iterable, max_batches, device) -> None:
    """Taylor criteria read ``param.grad``: leave the summed cross-entropy gradient of the batches."""
    training = model.training
    model.eval()  # no BatchNorm running-statistics update while measuring
    model.zero_grad(set_to_none=True)
    try:
        for x, y in _batches(data, max_batches, device):
            if y is None:
                raise CalibrationError(f"{type(imp).__name__} needs class labels: give (input, target) batches")
            F.cross_entropy(model(x), torch.as_tensor(y, device=x.device)).backward()
    finally:
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


_GRADIENT_CRITERIA = (tp.importance.GroupTaylorImportance,)

#: how each data-dependent criterion is brought up to date with the current model (first match in MRO order).
REFRESHERS: dict[type, Callable] = {
    DataDrivenImportance: _calibrate,
    tp.importance.GroupTaylorImportance: _gradients,
    tp.importance.ActivationImportance: _activations,
}


def needs_refresh(importance: tp.importance.Importance) -> bool:
    """Whether ``importance`` measures something on data that :func:`refresh_importance` must bring up to date."""
    return any(c in REFRESHERS for c in type(importance).__mro__)


def refresh_importance(importance: tp.importance.Importance, model: nn.Module, data: Iterable | None,
                       max_batches: int | None = None, device: torch.device | str | None = None) -> bool:
    """Recompute what ``importance`` measures on data (our statistics, Torch-Pruning's gradients or activations)
    for the current ``model``; returns False for data-free criteria, which need nothing."""
    refresher = next((REFRESHERS[c] for c in type(importance).__mro__ if c in REFRESHERS), None)
    if refresher is None:
        return False
    if data is None:
        raise ValueError(f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)")
    if device is None:
        device = model_device(model)
    refresher(importance, model, data, max_batches, device)
    return True


class EntropyPruner(tp.pruner.BasePruner):
    """``tp.pruner.BasePruner`` that refreshes data-dependent criteria (:func:`refresh_importance`: our
    ``calibrate()``, Torch-Pruning's Taylor gradients and activation statistics) before each ``step()``, so that
    iterative pruning with a data-driven criterion is a one-line swap::

        pruner = EntropyPruner(model, example_inputs, importance=create_importance("gap-entropy"),
                               calibration_data=loader, calibration_batches=10,
                               pruning_ratio=0.5, iterative_steps=5, ignored_layers=[model.fc])
        for _ in range(5):
            pruner.step()          # re-calibrates, then prunes
            finetune(model)

    Statistics are always those of the current (already pruned) network (methods.md pitfall 14). Calibration
    happens before anything is pruned in a step, so a calibration error leaves the model as it was.
    Every other argument is Torch-Pruning's.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        importance: tp.importance.Importance,
        *,
        calibration_data: Iterable | None = None,
        calibration_batches: int | None = None,
        calibration_device: torch.device | str | None = None,
        **kwargs,
    ) -> None:
        if calibration_data is None and needs_refresh(importance):
            raise ValueError(
                f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)"
            )
        super().__init__(model, example_inputs, importance, **kwargs)
        self.calibration_data = calibration_data
        self.calibration_batches = calibration_batches
        self.calibration_device = calibration_device

    def calibrate(self) -> None:
        refresh_importance(self.importance, self.model, self.calibration_data, self.calibration_batches,
                           self.calibration_device)

    def step(self, interactive: bool = False):
        self.calibrate()
        if interactive or not isinstance(self.importance, _GRADIENT_CRITERIA):
            return super().step(interactive=interactive)
        result = super().step()
        self.model.zero_grad(set_to_none=True)  # the gradients we left are stale once shapes change
        return result
