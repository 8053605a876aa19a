"""``entropy-prune``'s latency measurement: every model at every batch size, on PyTorch (and ONNX Runtime with
``--onnx``), each figure reporting the number of timed runs it rests on. In quick mode each backend has a total time
budget, shared by its figures as they come: each gets an equal share of what is left (a slow figure that overruns its
share with its minimum runs leaves less to the ones after it). The largest batch of each model is timed first: when
its minimum runs alone overrun the budget, the smaller batches keep to their minimum runs instead of first taking a
share that the budget does not have."""

from __future__ import annotations

import time

import torch.nn as nn

from ..latency import Latency, measure_latency, measure_onnx_latency
from ..messages import first_line
from .arguments import CLIError, LatencyPlan

__all__ = ["measure"]

#: the share a figure gets when the budget is spent: its minimum runs only
_SPENT_S = 1e-3


class _Budget:
    """``total`` seconds (None: no budget) shared by ``figures`` figures timed one after the other."""

    def __init__(self, total: float | None, figures: int) -> None:
        self.left, self.figures = total, figures

    def share(self) -> float | None:
        if self.left is None:
            return None
        return max(self.left / max(self.figures, 1), _SPENT_S)

    def spend(self, seconds: float, figures: int = 1) -> None:
        if self.left is not None:
            self.left -= seconds
        self.figures -= figures


def _figure_seconds(t: Latency) -> float:
    return (t.runs + t.warmup) * t.median_ms / 1000.0


def measure(plan: LatencyPlan, device: str, onnx: bool, models: dict[str, nn.Module],
            input_size: tuple[int, ...]) -> dict:
    """``{"mode", "device", "warmup", "budget_s", "max_runs", "pytorch": {model: {batch: Latency.to_dict()}}}`` (and
    ``"onnxruntime"`` with ``onnx``); ``budget_s`` is each backend's total, each figure's ``budget_s`` its share."""
    out: dict = {"mode": plan.mode, "device": device, "warmup": plan.warmup, "budget_s": plan.budget_s,
                 "max_runs": plan.runs, "pytorch": {name: {} for name in models}}
    budget = _Budget(plan.budget_s, len(models) * len(plan.batch_sizes))
    for name, model in models.items():
        timed = {}
        for b in sorted(plan.batch_sizes, reverse=True):
            start = time.perf_counter()
            timed[b] = measure_latency(model, input_size, b, runs=plan.runs, warmup=plan.warmup, device=device,
                                       budget_s=budget.share())
            budget.spend(time.perf_counter() - start)
        out["pytorch"][name] = {str(b): timed[b].to_dict() for b in plan.batch_sizes}
    if onnx:
        out["onnxruntime"] = {}
        budget = _Budget(plan.budget_s, len(models) * len(plan.batch_sizes))
        for name, model in models.items():
            try:  # one export per model, then each batch size with the same share
                timed = measure_onnx_latency(model, input_size, plan.batch_sizes, runs=plan.runs,
                                             warmup=plan.warmup, budget_s=budget.share())
            except RuntimeError as e:
                raise CLIError(f"--onnx: the {name} model: {first_line(e)}") from None
            budget.spend(sum(map(_figure_seconds, timed)), len(timed))
            out["onnxruntime"][name] = {str(t.batch_size): t.to_dict() for t in timed}
    return out
