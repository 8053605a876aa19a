"""A Torch-Pruning pruner that refreshes data-dependent criteria before every step, inside the repairs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp

from ..calibration.refresh import refresh_importance, requirements, reusable_batches
from ..repairs import repairs

__all__ = ["EntropyPruner"]


class EntropyPruner(tp.pruner.BasePruner):
    """``tp.pruner.BasePruner`` that refreshes data-dependent criteria
    (:func:`~entropy_importance.calibration.refresh_importance`: our ``calibrate()``, Torch-Pruning's Taylor gradients
    and activation statistics) before each ``step()``, and builds its graph and prunes inside
    :func:`~entropy_importance.repairs`, so that iterative pruning with a data-driven criterion is a one-line swap::

        pruner = EntropyPruner(model, example_inputs, importance=create_importance("gap-entropy"),
                               calibration_data=loader, calibration_batches=10,
                               pruning_ratio=0.5, iterative_steps=5, ignored_layers=[model.fc])
        for _ in range(5):
            pruner.step()          # re-calibrates, then prunes
            finetune(model)

    Statistics are those of the current (already pruned) network. Calibration happens before anything is pruned in
    a step, so a calibration error leaves the model as it was. Without ``calibration_data`` a data-driven
    importance must already be calibrated on ``model``, and its statistics are used as they are (one step; a second
    raises the staleness error). A one-shot iterator as ``calibration_data`` is read once, up to
    ``calibration_batches`` batches, and kept. ``group_time_limit``: see :func:`~entropy_importance.repairs`.
    ``refresh=False``: ``step()`` does not measure the criterion (the caller does).
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
        group_time_limit: float | None = None,
        refresh: bool = True,
        **kwargs,
    ) -> None:
        if refresh and calibration_data is None and requirements(importance).data \
                and not getattr(importance, "calibrated", False):
            raise ValueError(
                f"{type(importance).__name__} needs data: pass calibration_data= (an iterable of batches)"
            )
        self.calibration_data = reusable_batches(calibration_data, calibration_batches)
        self.calibration_batches = calibration_batches
        self.calibration_device = calibration_device
        self.group_time_limit = group_time_limit
        self.refresh = refresh
        with repairs(group_time_limit):
            super().__init__(model, example_inputs, importance, **kwargs)

    def calibrate(self) -> None:
        """Bring the importance up to date with the current model (nothing without ``calibration_data``, or with
        ``refresh=False``: the caller measures it, as :class:`~entropy_importance.Engine` does)."""
        if self.refresh and self.calibration_data is not None:
            refresh_importance(self.importance, self.model, self.calibration_data, self.calibration_batches,
                               self.calibration_device)

    def step(self, interactive: bool = False):
        self.calibrate()
        if interactive:  # the groups are formed and pruned while the caller iterates: stay inside the repairs
            return self._within_repairs(super().step(interactive=True))
        with repairs(self.group_time_limit):
            result = super().step()
        if requirements(self.importance).grad:
            self.model.zero_grad(set_to_none=True)  # the gradients we left are stale once shapes change
        return result

    def _within_repairs(self, groups: Iterator) -> Iterator:
        with repairs(self.group_time_limit):
            yield from groups
