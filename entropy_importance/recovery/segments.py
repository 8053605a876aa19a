"""A run of modules that the forward pass chains (each one's only input is the previous one's output), so that
layer-wise recovery can run the network one segment at a time from cached activations instead of from the input.

``find_segments`` traces one forward pass and expands the model, as deep as the chaining holds, into the longest run
of linked modules: timm's and torchvision's ResNets give ``conv1, bn1, act1, maxpool, layer1.0, layer1.1, ...``, a
ViT ``patch_embed, pos_drop, ..., blocks.0, blocks.1, ...``. A module is expanded into its children only when they
are themselves linked from its input to its output. The run is checked once numerically: running its segments one
after another from the cached input must give the output of a whole forward pass, else no run is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..calibration.batches import call_model
from .capture import capture

__all__ = ["find_segments", "SegmentCache", "run_matches"]


@dataclass
class _Call:
    calls: int = 0
    single_input: bool = False
    input_id: int = -1
    output_id: int = -1
    input_version: int = -1
    output_version: int = -1
    order: int = -1
    children: list[str] = field(default_factory=list)


def _trace(model: nn.Module, inputs: Any) -> dict[str, _Call]:
    names = {m: n for n, m in model.named_modules()}
    calls = {n: _Call() for n in names.values()}
    alive: list[Any] = []  # keeps traced tensors alive so that their ids are not reused during the pass
    counter = [0]

    def pre(module, args, kwargs):
        c = calls[names[module]]
        c.calls += 1
        if c.calls == 1:
            c.order = counter[0]
            counter[0] += 1
            c.single_input = len(args) == 1 and not kwargs and isinstance(args[0], Tensor)
            c.input_id = id(args[0]) if c.single_input else -1
            c.input_version = args[0]._version if c.single_input else -1
        alive.append(args)

    def post(module, args, kwargs, out):
        c = calls[names[module]]
        if c.calls == 1 and isinstance(out, Tensor):
            c.output_id, c.output_version = id(out), out._version
        alive.append(out)

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in names]
    handles += [m.register_forward_hook(post, with_kwargs=True) for m in names]
    try:
        with torch.no_grad():  # not inference mode: version counters tell in-place changes between two modules
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        calls[name].children = [prefix + child for child, _ in module.named_children()]
    return calls


def _linked(calls: dict[str, _Call], names: list[str]) -> bool:
    """Each called once with one tensor input, each input the previous one's output, unchanged in between (a
    residual ``x += shortcut`` between two modules keeps the tensor but bumps its version)."""
    if not all(calls[n].calls == 1 and calls[n].single_input and calls[n].output_id != -1 for n in names):
        return False
    return all(calls[b].input_id == calls[a].output_id and calls[b].input_version == calls[a].output_version
               for a, b in zip(names, names[1:], strict=False))


def _expand(name: str, calls: dict[str, _Call]) -> list[str]:
    children = sorted((c for c in calls[name].children if calls[c].calls), key=lambda c: calls[c].order)
    first, last, parent = calls[children[0]] if children else None, calls[children[-1]] if children else None, \
        calls[name]
    if len(children) >= 2 and _linked(calls, children) and first.input_id == parent.input_id \
            and first.input_version == parent.input_version and last.output_id == parent.output_id \
            and last.output_version == parent.output_version:
        return [s for c in children for s in _expand(c, calls)]
    return [name]


def _longest_run(calls: dict[str, _Call], names: list[str]) -> list[str]:
    best: list[str] = []
    run: list[str] = []
    for n in names:
        if run and _linked(calls, [run[-1], n]):
            run.append(n)
        elif _linked(calls, [n]):
            run = [n]
        else:
            run = []
        if len(run) > len(best):
            best = list(run)
    return best


def find_segments(model: nn.Module, inputs: Any) -> list[str]:
    """The longest run of chained modules of ``model`` (names, in forward order), or ``[]`` when there is none of
    at least two modules. ``inputs``: one or two examples."""
    calls = _trace(model, inputs)
    top = sorted((c for c in calls[""].children if calls[c].calls), key=lambda c: calls[c].order)
    expanded = [s for c in top for s in (_expand(c, calls) if _linked(calls, [c]) else [c])]
    run = _longest_run(calls, expanded)
    return run if len(run) >= 2 else []


class SegmentCache:
    """Activations of every calibration batch at the input of one segment of a run, moved forward segment by
    segment (under ``torch.inference_mode``): :meth:`input_of` gives the cached inputs of segment ``j``."""

    def __init__(self, model: nn.Module, segments: Sequence[str], inputs: Sequence[Any]) -> None:
        self.model, self.inputs = model, inputs
        modules = dict(model.named_modules())
        self.modules = [modules[s] for s in segments]
        self.position: int | None = None
        self.cached: list[Tensor] = []

    def input_of(self, j: int) -> list[Tensor]:
        with torch.inference_mode():
            if self.position is None:
                self.cached = [capture(self.model, {"": self.modules[0]}, x, before=True)[""][0] for x in self.inputs]
                self.position = 0
            if j < self.position:
                raise RuntimeError("segments must be visited in forward order")
            while self.position < j:
                module = self.modules[self.position]
                self.cached = [module(x) for x in self.cached]
                self.position += 1
        return self.cached


def run_matches(model: nn.Module, segments: Sequence[str], inputs: Any) -> bool:
    """Whether running the segments one after another from the first one's input gives the last one's output of a
    whole forward pass (on ``inputs``)."""
    modules = dict(model.named_modules())
    with torch.inference_mode():
        x = capture(model, {"": modules[segments[0]]}, inputs, before=True)[""][0]
        expected = capture(model, {"": modules[segments[-1]]}, inputs)[""][1]
        for s in segments:
            x = modules[s](x)
    return x.shape == expected.shape and bool(torch.allclose(x, expected, rtol=1e-4, atol=1e-5))
