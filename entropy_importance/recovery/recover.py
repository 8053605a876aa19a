"""``recover()``: repair a pruned network without training, from calibration data."""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..calibration.batches import batch_size, call_model, first_examples, model_device, split_batch, to_device
from ..messages import first_line
from ..serialization import pruning_record
from .batchnorm import reestimate_batchnorm
from .channels import kept_channels, tagged_layers
from .reconstruct import reconstruct
from .report import RecoveryReport

__all__ = ["recover", "check_method", "METHODS"]

#: the recovery methods; ``None`` / ``"none"`` is no recovery
METHODS = ("bn", "reconstruct", "reconstruct+bn")
#: the ridge strengths each layer chooses from on its held-out calibration images
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def check_method(method: Any) -> str | None:
    """``method`` normalised (None for no recovery), or a ValueError naming the choices."""
    if method is None or method == "none":
        return None
    if method not in METHODS:
        raise ValueError(f"recover method must be one of {', '.join(METHODS)} or None, got {method!r}")
    return method


def _history(original: nn.Module, pruned: nn.Module, history: Any) -> list[list]:
    """The history segments that lead from ``original`` to ``pruned``."""
    if history is not None:
        if hasattr(history, "pruning_history"):
            history = history.pruning_history()
        try:
            return [[[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history]]
        except (TypeError, ValueError):
            raise ValueError("history must be a Torch-Pruning pruner or its pruning_history(): a list of "
                             "[layer name, out_channels, indices]") from None
    record = pruning_record(pruned)
    if record is None:
        raise ValueError("the pruned model carries no pruning record (it was not pruned by entropy_importance): "
                         "pass history=pruner.pruning_history() of the Torch-Pruning pruner that pruned it")
    before = pruning_record(original)
    done = len(before.history) if before is not None else 0
    if before is not None and record.history[:done] != before.history:
        raise ValueError("the pruned model was not pruned from this original (their pruning records differ): "
                         "pass the model that was given to prune()")
    return record.history[done:]


def _same_architecture(original: nn.Module, pruned: nn.Module) -> None:
    a = [(n, type(m)) for n, m in original.named_modules()]
    b = [(n, type(m)) for n, m in pruned.named_modules()]
    if a != b:
        diff = next(((x, y) for x, y in zip(a, b, strict=False) if x != y), None)
        detail = f"{diff[0][0] or '<model>'} is {diff[0][1].__name__} in the original and {diff[1][0] or '<model>'} " \
                 f"{diff[1][1].__name__} in the pruned model" if diff else f"{len(a)} vs {len(b)} modules"
        raise ValueError(f"original and pruned are not the same architecture ({detail}): pass the unpruned model "
                         "the pruned one came from")


def _read_batches(data: Iterable, max_batches: int | None, device: torch.device) -> list[Any]:
    if data is None:
        raise ValueError("recovery needs calibration data: pass an iterable of batches (tensors or (input, target))")
    if isinstance(data, torch.Tensor):
        raise TypeError("calibration data must be an iterable of batches, not one tensor: wrap it as [tensor]")
    inputs = [to_device(split_batch(b)[0], device) for b in itertools.islice(iter(data), max_batches)]
    if not inputs:
        raise ValueError("calibration data yielded no batches: give a non-empty loader")
    return inputs


def recover(
    original: nn.Module,
    pruned: nn.Module,
    calibration_data: Iterable,
    method: str = "reconstruct",
    *,
    history: Any = None,
    calibration_batches: int | None = None,
    positions: int = 64,
    samples_per_input: int = 16,
    ridge: float | Sequence[float] = RIDGES,
    intercept: bool = True,
    max_dim: int = 8192,
    device: torch.device | str | None = None,
    progress: bool = False,
    seed: int = 0,
    inplace: bool = False,
) -> tuple[nn.Module, RecoveryReport]:
    """Repair a pruned network without training; returns ``(recovered, report)``.

    ``recovered`` is a copy of ``pruned`` (as with ``prune()``, the models you pass are never modified: ``pruned``
    and ``original`` keep their weights, modes and hooks, also when recovery fails or is interrupted), unless
    ``inplace=True``: then ``pruned`` itself is repaired and returned (on an error or an interruption its state is
    restored). It keeps ``pruned``'s architecture, state-dict keys and pruning record, so ``save_pruned`` /
    ``load_pruned`` work on it.

    Methods:
        ``"bn"``: BatchNorm running statistics re-estimated on the calibration data (cumulative average, train-mode
            BatchNorm under ``torch.no_grad``, every other module in eval mode; adaptive BN, EagleEye 2020).
        ``"reconstruct"`` (default): every conv / linear layer whose input changed is refitted in forward order by
            ridge least squares to reproduce the unpruned layer's output for the channels it keeps
            (:func:`~entropy_importance.recovery.reconstruct.reconstruct`; He et al. 2017, ThiNet 2017).
        ``"reconstruct+bn"``: both, BatchNorm last.

    Args:
        original: the unpruned model ``pruned`` came from.
        pruned: a model returned by ``prune()``, the engine or a pipeline (it carries its pruning history), or
            pruned by Torch-Pruning directly: then pass ``history=`` (the pruner or ``pruner.pruning_history()``).
        calibration_data: an iterable of batches (tensors, ``(input, target)`` or dicts), e.g. a DataLoader of
            training images; labels are not used.
        calibration_batches: read at most this many batches.
        positions: at most this many output positions (conv) / tokens (linear) sampled per image.
        samples_per_input: each layer samples about this many rows per input of its least squares over all the
            calibration images (``16 * d``; fewer when the images have fewer positions).
        ridge: ridge strengths (relative to the mean diagonal of each layer's input Gram matrix; the fit is pulled
            towards the pruned layer's current weights), from which each layer takes the one with the lowest error on
            the calibration images held out of its fit (every fourth); a layer keeps its weights when none beats
            them there. One number: that ridge, no held-out choice.
        intercept: fit an intercept for bias-free layers followed directly by BatchNorm (folded into its running
            mean).
        max_dim: layers with more inputs per output (``in_channels / groups * kernel area``) are skipped with a
            warning (their Gram matrix takes ``8 * max_dim²`` bytes).
        device: where to run (default: the pruned model's device); the result stays there.
        progress: a tqdm bar over the layers.

    Raises:
        ValueError / TypeError: bad arguments, calibration batches that do not run through the model, models that
            are not an original and its pruned version, NaN / Inf activations; before anything is copied.
    """
    method = check_method(method)
    if method is None:
        raise ValueError("recover() needs a method: 'bn', 'reconstruct' or 'reconstruct+bn'")
    if not isinstance(original, nn.Module) or not isinstance(pruned, nn.Module):
        raise TypeError("original and pruned must be torch.nn.Module instances")
    for name, value, low in (("positions", positions, 1), ("samples_per_input", samples_per_input, 1),
                             ("max_dim", max_dim, 1)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    ridges = (ridge,) if isinstance(ridge, (int, float)) else tuple(ridge)
    if not ridges or not all(isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in ridges):
        raise ValueError(f"ridge must be a number > 0 or a sequence of them, got {ridge!r}")
    if calibration_batches is not None and not (isinstance(calibration_batches, int) and calibration_batches >= 1):
        raise ValueError(f"calibration_batches must be an integer >= 1 or None, got {calibration_batches!r}")
    _same_architecture(original, pruned)
    segments = _history(original, pruned, history) if method != "bn" else []
    device = torch.device(device) if device is not None else model_device(pruned)
    if inplace and model_device(pruned) != device:
        raise ValueError(f"inplace=True needs the pruned model on the recovery device ({device}): move it first")
    start = time.perf_counter()
    inputs = _read_batches(calibration_data, calibration_batches, device)
    report = RecoveryReport(method, images=sum(batch_size(x) or 0 for x in inputs))
    source = original if model_device(original) == device else copy.deepcopy(original).to(device)
    modes = {m: m.training for m in source.modules()}
    try:
        source.eval()
        with torch.inference_mode():
            try:
                call_model(source, inputs[0])
            except Exception as e:  # noqa: BLE001 - the caller's data does not fit the model
                reason = first_line(e, 200, with_type=True)
                raise ValueError(f"calibration batch 0 does not run through the original model ({reason}): give "
                                 "batches shaped like the model's inputs, of its dtype and device") from None
        if inplace:
            work, snapshot = pruned, {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        else:
            work, snapshot = copy.deepcopy(pruned).to(device), None
        training = pruned.training
        work.eval()
        try:
            _repair(source, work, segments, inputs, method, report, positions=positions,
                    samples_per_input=samples_per_input, ridge=ridges,
                    intercept=intercept, max_dim=max_dim, seed=seed, progress=progress)
        except BaseException:
            if snapshot is not None:
                work.load_state_dict(snapshot)
            raise
        finally:
            work.train(training)
    finally:
        for m, mode in modes.items():
            m.training = mode
    report.seconds = time.perf_counter() - start
    return work, report


def _repair(source: nn.Module, work: nn.Module, segments: list[list], inputs: list[Any], method: str,
            report: RecoveryReport, *, positions: int, samples_per_input: int, ridge: tuple[float, ...],
            intercept: bool, max_dim: int,
            seed: int, progress: bool) -> None:
    """Apply ``method`` to ``work`` in place, filling ``report``."""
    if method != "bn":
        kept = kept_channels(source, segments, first_examples(inputs[0], 1), work)
        layers = tagged_layers(source)
        if not any(kept[n].pruned(*layers[n].weight.shape[:2]) for n in kept):
            report.note = "nothing to recover: no conv / linear layer of the model was pruned"
            warnings.warn(report.note, stacklevel=3)
        else:
            bar = _progress_bar(progress, method)
            report.layers = reconstruct(source, work, kept, inputs, positions=positions,
                                        samples_per_input=samples_per_input, ridge=ridge,
                                        intercept=intercept, max_dim=max_dim, seed=seed, progress=bar)
            too_big = [r.name for r in report.layers if r.status == "skipped" and "max_dim" in r.note]
            if too_big:
                warnings.warn(f"recovery skipped {len(too_big)} layers too wide for max_dim={max_dim} "
                              f"({too_big[:3]}); their BatchNorm statistics are re-estimated only with "
                              "method='reconstruct+bn'", stacklevel=3)
    if method != "reconstruct":
        report.batchnorm_layers = reestimate_batchnorm(work, inputs)


def _progress_bar(enabled: bool, method: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda levels: tqdm(levels, desc=f"recover ({method})", unit="level", leave=False)
