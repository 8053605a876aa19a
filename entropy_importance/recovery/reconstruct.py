"""Layer-wise least-squares reconstruction of a pruned network (He et al. 2017 "Channel pruning for accelerating
very deep neural networks"; ThiNet, Luo et al. 2017; Kwon et al. 2022 for transformers).

In forward order, every conv / linear layer ``l`` of the pruned network is refitted so that, on calibration data,
it reproduces the unpruned network's output of that layer for the channels it keeps from the input it now receives:

    W_l* = argmin_W  sum_samples ||W x_l' - y_l[kept]||²  +  lambda ||W - W_l||²

where ``x_l'`` is the layer's input in the pruned network with every earlier layer already refitted (so errors do
not accumulate), ``y_l`` the unpruned layer's output (bias included) and ``W_l`` the pruned layer's current weights.
A layer with a bias refits it as the intercept; a layer without a bias whose output goes straight into a BatchNorm
layer gets its intercept folded into that BatchNorm's running mean (``BN(Wx + c) = BN'(Wx)`` with
``running_mean' = running_mean - c``), so the architecture and the state-dict keys never change. Because the output
the layer reproduces is the unpruned one, the BatchNorm after it stays consistent with its statistics.

Layers whose input equals the unpruned network's (before the first pruned layer) are left alone; layers that read
the same input tensor (a residual block's first conv and its shortcut, separate q / k / v projections) are fitted
in one pass over the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..calibration.batches import batch_size, call_model, first_examples
from .capture import capture
from .channels import KeptChannels, tagged_layers
from .least_squares import NormalEquations, SolveError
from .report import LayerRecovery
from .samples import LayerRows, supported
from .segments import SegmentCache, find_segments, run_matches

__all__ = ["reconstruct", "trace_layers", "LayerTrace"]

_UNCHANGED = 1e-10  # relative error below which a layer's input is taken to be the unpruned network's
_OWN_FORWARD = 1e-3  # relative mismatch above which a layer's forward is not a plain conv / linear of its weights
_HOLD_OUT = 4  # every fourth calibration image is held out of the fit, to choose the ridge


@dataclass
class LayerTrace:
    """How the layers are called in one forward pass: order of first call, calls per layer, the input tensor each
    reads (layers reading the same tensor share a key), and the BatchNorm layer fed directly by a layer's output."""

    order: list[str]
    calls: dict[str, int]
    input_key: dict[str, int]
    batchnorm_after: dict[str, str]


def trace_layers(model: nn.Module, inputs: Any, layers: dict[str, nn.Module]) -> LayerTrace:
    """Trace one forward pass of ``model`` on ``inputs`` (one or two examples are enough) with hooks that are
    removed afterwards."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    calls: dict[str, int] = {}
    input_key: dict[str, int] = {}
    produced: dict[int, str] = {}
    batchnorm_after: dict[str, str] = {}
    alive: list[Any] = []  # keeps traced tensors alive so that their ids are not reused during the pass

    def on_layer(module, args, out):
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if calls[name] == 1:
            order.append(name)
            input_key[name] = id(args[0]) if args and isinstance(args[0], Tensor) else -1
        alive.extend([args, out])
        if isinstance(out, Tensor):
            produced[id(out)] = name

    def on_batchnorm(module, args, out):
        alive.extend([args, out])
        if args and isinstance(args[0], Tensor) and id(args[0]) in produced:
            batchnorm_after.setdefault(produced[id(args[0])], names[module])

    handles = [m.register_forward_hook(on_layer) for m in layers.values()]
    handles += [m.register_forward_hook(on_batchnorm) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.inference_mode():
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    bn_calls: dict[str, int] = {}
    for bn in batchnorm_after.values():
        bn_calls[bn] = bn_calls.get(bn, 0) + 1
    batchnorm_after = {n: bn for n, bn in batchnorm_after.items() if bn_calls[bn] == 1}
    return LayerTrace(order, calls, input_key, batchnorm_after)


class _Fit:
    """One layer's fit in progress."""

    def __init__(self, name: str, module: nn.Module, rows: LayerRows, kept: KeptChannels, index: int,
                 batchnorm: nn.Module | None) -> None:
        self.name, self.module, self.rows, self.kept, self.index, self.batchnorm = name, module, rows, kept, index, \
            batchnorm
        self.fit = NormalEquations(rows.groups, rows.dim, rows.outputs, device=module.weight.device)
        self.held_out = NormalEquations(rows.groups, rows.dim, rows.outputs, device=module.weight.device)
        self.record = LayerRecovery(name, "refitted", dim=rows.dim)
        self.active = True

    def add(self, x: Tensor, y_pruned: Tensor, y_original: Tensor, batch: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + batch * 7_919 + self.index)
        idx = self.rows.sample(y_original, generator)
        hw = tuple(y_original.shape[2:]) if y_original.dim() == 4 else None
        xs = self.rows.input_rows(x, idx, hw)
        ys = self.rows.output_rows(y_original, idx, self.kept.out)
        if batch == 0 and not self._first_batch(xs, ys, self.rows.output_rows(y_pruned, idx, None)):
            return
        images = y_original.shape[0]
        held = (torch.arange(images, device=xs.device) % _HOLD_OUT == _HOLD_OUT - 1).repeat_interleave(
            xs.shape[0] // images)
        self.fit.add(xs[~held], ys[~held])
        if bool(held.any()):
            self.held_out.add(xs[held], ys[held])

    def _first_batch(self, xs: Tensor, ys: Tensor, own: Tensor) -> bool:
        """Checks on the first batch: the layer computes ``W x`` (a plain conv / linear), and its input differs
        from the unpruned network's (else there is nothing to fit). False: the layer is done."""
        w0 = self.rows.weights().to(xs.device)
        predicted = torch.einsum("ngd,god->ngo", xs.double(), w0)
        own = own.double()
        if (predicted - own).norm() > _OWN_FORWARD * own.norm().clamp(min=1e-12):
            self._finish("skipped", "its forward is not a plain convolution / linear map of its weights")
            return False
        ys = ys.double()
        if (predicted - ys).square().sum() <= _UNCHANGED * ys.square().sum().clamp(min=1e-30):
            self._finish("unchanged")
            return False
        return True

    def _finish(self, status: str, note: str = "") -> None:
        self.record.status, self.record.note, self.active = status, note, False

    def solve(self, ridges: Sequence[float]) -> None:
        """Choose the ridge on the held-out images (the one with the lowest held-out error; none if no candidate
        beats the current weights there), solve on all samples with it, and write the weights into the layer (and
        the intercept into its BatchNorm)."""
        if not self.active:
            return
        self.active = False
        rows, record = self.rows, self.record
        both = self.fit.merged(self.held_out)
        record.samples = both.samples
        if not both.finite():
            raise ValueError(f"the calibration activations reaching layer {self.name!r} are NaN or Inf: check the "
                             "calibration data and the model's weights")
        w0 = rows.weights().to(both.G.device)
        before = both.error(w0)
        record.error_before = record.error_after = max(before, 0.0) / max(both.energy(), 1e-30)
        ridge = ridges[0]
        if len(ridges) > 1 and self.held_out.samples and self.fit.samples:
            energy = max(self.held_out.energy(), 1e-30)
            baseline = self.held_out.error(w0)
            scored = []
            for r in ridges:
                try:
                    scored.append((self.held_out.error(self.fit.solve(w0, r, rows.free())), r))
                except SolveError:
                    continue
            best = min(scored, default=None)
            record.heldout_before = max(baseline, 0.0) / energy
            if best is None or not math.isfinite(best[0]) or best[0] >= baseline:
                record.heldout_after = record.heldout_before
                record.status, record.note = "kept", "no ridge lowers the error on the held-out calibration images"
                return
            record.heldout_after, ridge = max(best[0], 0.0) / energy, best[1]
        record.ridge = ridge
        try:
            w = both.solve(w0, ridge, rows.free())
        except SolveError as e:
            record.status, record.note = "kept", str(e)
            return
        after = both.error(w)
        if not math.isfinite(after) or after >= before:
            record.status, record.note = "kept", "the fit was not better on the calibration samples"
            return
        record.error_after = max(after, 0.0) / max(both.energy(), 1e-30)
        self._write(w)

    def _write(self, w: Tensor) -> None:
        module, rows = self.module, self.rows
        weight = w[..., : rows.dim - int(rows.intercept)]
        with torch.no_grad():
            module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
            if rows.intercept:
                c = w[..., -1].reshape(-1)
                if module.bias is not None:
                    module.bias.copy_(c.to(module.bias.dtype))
                elif self.batchnorm is not None:
                    self.batchnorm.running_mean.sub_(c.to(self.batchnorm.running_mean.dtype))


def _levels(trace: LayerTrace, fits: dict[str, Any]) -> list[list[str]]:
    """Consecutive layers (in forward order) that read the same input tensor form one level."""
    levels: list[list[str]] = []
    for name in trace.order:
        if name not in fits:
            continue
        if levels and trace.input_key[name] != -1 and trace.input_key[levels[-1][-1]] == trace.input_key[name]:
            levels[-1].append(name)
        else:
            levels.append([name])
    return levels


def reconstruct(original: nn.Module, pruned: nn.Module, kept: dict[str, KeptChannels], inputs: Sequence[Any], *,
                positions: int = 64, samples_per_input: int = 16, ridge: Sequence[float] = (1e-3,),
                intercept: bool = True, max_dim: int = 8192, seed: int = 0, progress: Callable | None = None
                ) -> list[LayerRecovery]:
    """Refit ``pruned``'s conv / linear layers in place (see the module docstring); ``original`` is only run.
    ``inputs`` are model inputs on both models' device, both models in eval mode. Each layer samples about
    ``samples_per_input`` rows per input of its least squares (``d``) over all images, at most ``positions`` per
    image. ``progress`` wraps the list of levels (e.g. ``tqdm``). Returns one record per conv / linear layer of
    ``pruned``.

    Raises:
        ValueError: non-finite activations reaching a layer.
    """
    layers = tagged_layers(pruned)
    trace = trace_layers(pruned, first_examples(inputs[0], 2), layers)
    images = sum(batch_size(x) or 1 for x in inputs)
    records: list[LayerRecovery] = []
    fits: dict[str, _Fit] = {}
    bns = dict(pruned.named_modules())
    for index, name in enumerate(trace.order):
        module = layers[name]
        reason = supported(module)
        if reason is None and trace.calls[name] != 1:
            reason = f"called {trace.calls[name]} times per forward pass"
        if reason is None and name not in kept:
            reason = "no channel record"
        bn_name = trace.batchnorm_after.get(name)
        use_intercept = module.bias is not None or (intercept and bn_name is not None)
        rows = LayerRows(module, positions, use_intercept) if reason is None else None
        if rows is not None and rows.dim > max_dim:
            reason = f"{rows.dim} inputs per output exceed max_dim={max_dim}"
        if rows is not None:
            rows.positions = max(1, min(positions, math.ceil(samples_per_input * rows.dim / max(images, 1))))
        if reason is not None:
            records.append(LayerRecovery(name, "skipped", note=reason))
            continue
        batchnorm = bns[bn_name] if (bn_name is not None and module.bias is None) else None
        fits[name] = _Fit(name, module, rows, kept[name], index, batchnorm)
        records.append(fits[name].record)
    records += [LayerRecovery(n, "skipped", note="not called by the forward pass") for n in layers
                if n not in trace.calls]
    levels = _levels(trace, fits)
    runner = _LevelRunner(original, pruned, inputs, layers)
    for level in (progress(levels) if progress is not None else levels):
        with torch.inference_mode():
            for b, got_pruned, got_original in runner.passes(level, fits):
                for n in got_pruned:
                    x_in, y_pruned = got_pruned[n]
                    fits[n].add(x_in, y_pruned, got_original[n][1], b, seed)
        for n in level:
            fits[n].solve(ridge)
    return records


class _LevelRunner:
    """Runs the calibration batches through both networks up to a level's layers: from the cached input of the
    segment holding them when the network has a run of chained segments (:mod:`.segments`), else from the input."""

    def __init__(self, original: nn.Module, pruned: nn.Module, inputs: Sequence[Any],
                 layers: dict[str, nn.Module]) -> None:
        self.original, self.pruned, self.inputs, self.layers = original, pruned, inputs, layers
        self.originals = dict(original.named_modules())
        example = first_examples(inputs[0], 2)
        segments = find_segments(pruned, example)
        if segments and not (run_matches(pruned, segments, example) and run_matches(original, segments, example)):
            segments = []
        self.segments = segments
        self.segment_of = {n: j for j, seg in enumerate(segments) for n in layers
                           if n == seg or n.startswith(seg + ".")}
        self.caches = (SegmentCache(pruned, segments, inputs), SegmentCache(original, segments, inputs))

    def passes(self, level: list[str], fits: dict[str, _Fit]):
        """For each batch while some layer of ``level`` is active: ``(batch index, {name: (input, output)} in the
        pruned network, the same in the unpruned one)``."""
        where = {self.segment_of.get(n) for n in level}
        segment = where.pop() if len(where) == 1 else None
        if segment is not None:
            starts = [cache.input_of(segment) for cache in self.caches]
            models = [dict(self.pruned.named_modules())[self.segments[segment]], self.originals[self.segments[segment]]]
        else:
            starts, models = [self.inputs, self.inputs], [self.pruned, self.original]
        for b in range(len(self.inputs)):
            active = [n for n in level if fits[n].active]
            if not active:
                return
            got_pruned = capture(models[0], {n: self.layers[n] for n in active}, starts[0][b])
            got_original = capture(models[1], {n: self.originals[n] for n in active}, starts[1][b])
            yield b, got_pruned, got_original
