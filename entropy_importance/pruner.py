"""A Torch-Pruning pruner that re-calibrates data-driven criteria before every step."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch_pruning as tp

from .calibration import DataDrivenImportance

__all__ = ["EntropyPruner"]


class EntropyPruner(tp.pruner.BasePruner):
    """``tp.pruner.BasePruner`` that calls ``importance.calibrate(model, calibration_data)`` before each
    ``step()``, so that iterative pruning with a data-driven criterion is a one-line swap::

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
        if isinstance(importance, DataDrivenImportance) and calibration_data is None:
            raise ValueError(
                f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)"
            )
        super().__init__(model, example_inputs, importance, **kwargs)
        self.calibration_data = calibration_data
        self.calibration_batches = calibration_batches
        self.calibration_device = calibration_device

    def calibrate(self) -> None:
        if isinstance(self.importance, DataDrivenImportance):
            self.importance.calibrate(
                self.model, self.calibration_data, max_batches=self.calibration_batches,
                device=self.calibration_device,
            )

    def step(self, interactive: bool = False):
        self.calibrate()
        return super().step(interactive=interactive)
