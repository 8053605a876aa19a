"""Streaming calibration for data-driven criteria: hooks, batches, staleness and distributed merging.

Where activations are measured (``where=``):

* ``"input"`` (default): the input of every conv / linear layer, read by a forward *pre*-hook. That tensor is
  the post-BN, post-activation map of the channel the layer consumes (what HRank and CHIP read at the ReLU
  outputs), including the effect of an in-place ReLU, and it exists for every consumer of a channel: a
  residual stream, a concatenation, the classifier. Such statistics score the *in-channel* dependencies of a
  group (conv/linear in-channels, depthwise convs).
* ``"output"``: the output of every conv / linear layer (pre-BN, pre-activation), read by a forward hook and
  reduced inside the hook (an in-place activation cannot change it afterwards). These statistics score the
  *out-channel* dependencies.

Statistics are kept in the importance object, keyed by module name; nothing is stored on the user's modules,
and only the hooks registered here are removed.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from ..criteria.base import ChannelScoreImportance
from ..criteria.channels import ChannelView
from .batches import model_device, split_batch, to_device
from .errors import CalibrationError, NotCalibratedError, StaleStatisticsError
from .statistics import LayerStatistic, distributed_world

__all__ = [
    "DataDrivenImportance",
    "Observer",
    "NotCalibratedError",
    "StaleStatisticsError",
    "CalibrationError",
]

_INPUT_KINDS = frozenset({"conv_in", "linear_in", "depthwise"})
_OUTPUT_KINDS = frozenset({"conv_out", "linear_out", "depthwise"})
_OBSERVED_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _width(module: nn.Module, where: str) -> int | None:
    """Channels a conv / linear layer's statistics have at its input or output."""
    if isinstance(module, nn.Linear):
        return module.in_features if where == "input" else module.out_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels if where == "input" else module.out_channels
    return None


def _channels_first(module: nn.Module, x: Tensor) -> Tensor:
    """``(batch, channels, positions)`` float32 view of a conv (N, C, *) or linear (N, *, C) activation."""
    x = x.detach()
    if isinstance(module, nn.Linear):
        x = x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2) if x.dim() > 1 else x.reshape(1, -1, 1)
    else:
        x = x.reshape(x.shape[0], x.shape[1], -1)
    return x.float()


class Observer:
    """Handle yielded by :meth:`DataDrivenImportance.observe`: set :attr:`targets` before each forward pass
    when the criterion needs labels."""

    def __init__(self) -> None:
        self.targets: Tensor | None = None
        self.batches = 0
        self._checked: tuple[Any, Tensor] | None = None  # (targets as given, validated tensor)


class DataDrivenImportance(ChannelScoreImportance):
    """Base of the criteria that score channels from activation statistics.

    Collect statistics with :meth:`calibrate` (a loader) or :meth:`observe` (your own loop), then use the
    object as ``importance=`` in any Torch-Pruning pruner; :class:`~entropy_importance.EntropyPruner`
    re-calibrates before every step. Subclasses define :meth:`new_statistic` and :meth:`score_statistic`.

    Args:
        where: ``"input"`` (post-activation input of the consuming layers, default) or ``"output"``.

    The class attribute ``needs_labels`` says whether calibration batches must carry integer class labels.
    """

    needs_labels: bool = False
    #: fewer calibration images than this give every channel the same score
    min_images: int = 1

    def __init__(self, where: str = "input", **kwargs) -> None:
        super().__init__(**kwargs)
        if where not in ("input", "output"):
            raise ValueError(f"where must be 'input' or 'output', got {where!r}")
        self.where = where
        self._stats: dict[str, LayerStatistic] = {}
        self._names: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self._cache: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ subclass API
    def new_statistic(self, channels: int) -> LayerStatistic:
        raise NotImplementedError

    def score_statistic(self, stat: LayerStatistic) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ collection
    @property
    def calibrated(self) -> bool:
        return bool(self._stats)

    def reset(self) -> None:
        """Forget all statistics."""
        self._stats.clear()
        self._names = weakref.WeakKeyDictionary()
        self._cache.clear()

    def bind(self, model: nn.Module) -> DataDrivenImportance:
        """Use the statistics for ``model``, a copy of the calibrated network (same layer names and widths, same
        weights: the caller vouches for that), instead of the model they were collected on.

        Raises:
            NotCalibratedError: no statistics.
            StaleStatisticsError: a layer of the statistics is missing from ``model`` or has another width.
        """
        if not self._stats:
            raise NotCalibratedError(f"{type(self).__name__} has no statistics to bind: calibrate first")
        modules = dict(model.named_modules())
        for name, stat in self._stats.items():
            module = modules.get(name)
            width = _width(module, self.where) if module is not None else None
            if width != stat.channels:
                raise StaleStatisticsError(
                    f"statistics for layer {name!r} ({stat.channels} channels) do not fit this model "
                    f"({'no such layer' if module is None else f'{width} channels'}): calibrate on this model")
        self._names = weakref.WeakKeyDictionary(
            {m: n for n, m in modules.items() if isinstance(m, _OBSERVED_TYPES)})
        self._cache.clear()
        return self

    def __deepcopy__(self, memo: dict) -> DataDrivenImportance:
        """A copy with its own statistics, bound to no model (:meth:`bind` it); module references are not copied."""
        clone = copy.copy(self)
        state = {k: v for k, v in vars(self).items() if k not in ("_names", "_cache")}
        vars(clone).update(copy.deepcopy(state, memo))
        clone._names, clone._cache = weakref.WeakKeyDictionary(), {}
        return clone

    @contextmanager
    def observe(self, model: nn.Module) -> Iterator[Observer]:
        """Collect statistics from every forward pass of ``model`` inside the block.

        The block runs under ``torch.no_grad()`` with the model in eval mode; the training mode is restored and
        the hooks removed on exit, also when an exception leaves the block. Statistics accumulate on top of
        what was collected before (:meth:`reset` starts afresh)::

            with imp.observe(model) as obs:
                for images, labels in loader:
                    obs.targets = labels      # only for label-aware criteria
                    model(images)
        """
        observer = Observer()
        handles = []
        for name, module in model.named_modules():
            if isinstance(module, _OBSERVED_TYPES):
                self._names[module] = name
                hook = self._make_hook(name, observer)
                if self.where == "input":
                    handles.append(module.register_forward_pre_hook(lambda m, args, h=hook: h(m, args[0])))
                else:
                    handles.append(module.register_forward_hook(lambda m, args, out, h=hook: h(m, out)))
        training = model.training
        self._cache.clear()
        try:
            model.eval()
            with torch.no_grad():
                yield observer
        finally:
            for handle in handles:
                handle.remove()
            model.train(training)

    def _make_hook(self, name: str, observer: Observer):
        def hook(module: nn.Module, tensor: Any) -> None:
            if not isinstance(tensor, Tensor):
                return
            act = _channels_first(module, tensor)
            if not torch.isfinite(act.sum()) and not torch.isfinite(act).all():
                raise CalibrationError(
                    f"non-finite activations (NaN/Inf) at the {self.where} of layer {name!r}: check the inputs and "
                    "the weights (an fp16 overflow under autocast?); no statistics were kept for this batch"
                )
            targets = None
            if self.needs_labels:  # validated once per batch, not once per layer
                key = (observer.targets, getattr(observer.targets, "_version", None))  # in-place edits re-check
                seen = observer._checked
                if seen is None or seen[0][0] is not key[0] or seen[0][1] != key[1]:
                    observer._checked = (key, self._checked_targets(observer.targets, act.shape[0], name))
                targets = observer._checked[1]
                if targets.numel() != act.shape[0]:
                    return  # not one row per image (a detector's RoI head, flattened tokens): no label to pair
            stat = self._stats.get(name)
            if stat is None or stat.channels != act.shape[1]:
                stat = self._stats[name] = self.new_statistic(act.shape[1])
            stat.update(act, targets)
        return hook

    def _checked_targets(self, targets: Tensor | None, batch: int, layer: str) -> Tensor:
        if targets is None:
            raise CalibrationError(
                f"{type(self).__name__} needs class labels: give (input, target) batches to calibrate(), or set "
                "observer.targets before each forward pass inside observe()"
            )
        targets = torch.as_tensor(targets).reshape(-1)
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise CalibrationError(f"labels must be integer class ids, got dtype {targets.dtype}")
        if targets.numel() != batch:
            raise CalibrationError(f"got {targets.numel()} labels for a batch of {batch} at layer {layer!r}")
        num_classes = getattr(self, "num_classes", None)
        if targets.min() < 0 or (num_classes is not None and targets.max() >= num_classes):
            limit = f"[0, {num_classes})" if num_classes is not None else "non-negative"
            raise CalibrationError(
                f"labels out of range: got [{int(targets.min())}, {int(targets.max())}], expected {limit}"
            )
        return targets

    def calibrate(
        self,
        model: nn.Module,
        data: Iterable,
        max_batches: int | None = None,
        device: torch.device | str | None = None,
        progress: bool | None = None,
    ) -> DataDrivenImportance:
        """Collect fresh statistics from ``data`` (an iterable of tensors, ``(input, target)`` tuples or dicts).

        Replaces earlier statistics. When a ``torch.distributed`` process group is initialised, statistics are
        merged across ranks at the end (:meth:`all_reduce`). On error the previous statistics are kept and the
        model is unchanged.

        Args:
            max_batches: stop after this many batches.
            device: where to run (default: the device of the model's first parameter).
            progress: show a progress bar (default: only on a terminal).
        """
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        if device is None:
            device = model_device(model)
        previous, previous_names = self._stats, self._names
        self._stats, self._names = {}, weakref.WeakKeyDictionary()
        try:
            total = max_batches
            if total is None and hasattr(data, "__len__"):
                total = len(data)
            with self.observe(model) as obs:
                bar = tqdm(data, total=total, desc=f"calibrating {type(self).__name__}", unit="batch",
                           disable=None if progress is None else not progress, leave=False)
                for batch in bar:
                    if max_batches is not None and obs.batches >= max_batches:
                        break
                    inputs, targets = split_batch(batch)
                    obs.targets = targets
                    model(to_device(inputs, device))
                    obs.batches += 1
                bar.close()
            if obs.batches == 0:
                raise CalibrationError("calibration data yielded no batches: give a non-empty loader")
            if not self._stats:
                raise CalibrationError("no conv or linear layer was reached by the forward pass")
            seen = max(stat.num_images for stat in self._stats.values())
            if seen < self.min_images:
                raise CalibrationError(
                    f"{type(self).__name__} needs at least {self.min_images} calibration images, got {seen}: with "
                    "fewer every channel gets the same score; give more (or larger) batches")
        except BaseException:
            self._stats, self._names = previous, previous_names
            self._cache.clear()
            raise
        if distributed_world() > 1:
            self.all_reduce()
        return self

    def all_reduce(self) -> None:
        """Merge the statistics of all ``torch.distributed`` ranks (every rank must call it)."""
        if distributed_world() == 1:
            return
        for name in sorted(self._stats):
            self._stats[name].all_reduce()
        self._cache.clear()

    # ------------------------------------------------------------------ scoring
    def layer_scores(self, view: ChannelView) -> Tensor | None:
        if not self._stats:
            raise NotCalibratedError(
                f"{type(self).__name__} has no statistics: call imp.calibrate(model, data) (or collect them inside "
                "imp.observe(model)) before pruning, or prune with EntropyPruner(..., calibration_data=data)"
            )
        if view.kind not in (_INPUT_KINDS if self.where == "input" else _OUTPUT_KINDS):
            return None
        name = self._names.get(view.module)
        if name is None:
            raise StaleStatisticsError(
                f"{type(self).__name__}: the statistics were collected on another model (a copy counts): calibrate "
                "on the model being pruned, or imp.bind(model) when it is an identical copy of the calibrated one"
            )
        stat = self._stats.get(name)
        if stat is None:
            return None  # this layer saw no data (not reached by the forward pass)
        if stat.channels != view.num_channels:
            raise StaleStatisticsError(
                f"statistics for layer {name!r} were collected with {stat.channels} channels but it now has "
                f"{view.num_channels}: the model changed since calibration. Call imp.calibrate(model, data) again "
                "before the next pruning step (EntropyPruner does this for you)"
            )
        if name not in self._cache:
            self._cache[name] = self.score_statistic(stat).to(view.slices.device)
        return self._cache[name]
