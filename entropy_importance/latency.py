"""Measured inference latency: what a MAC speed-up is worth on a real device.

``measure_latency`` times the PyTorch model under ``torch.inference_mode`` (CUDA synchronised before and after each
run); ``measure_onnx_latency`` exports it to ONNX and times ONNX Runtime's CPU provider (optional extra:
``pip install entropy-importance[onnx]``). Both report the median and the spread (min / max) of the timed runs after
``warmup`` untimed ones: exactly ``runs`` of them, or, with a time budget ``budget_s``, as many as fit in the budget
(warm-up included), at least :data:`MIN_RUNS` and at most ``runs``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .messages import first_line

__all__ = ["Latency", "MIN_RUNS", "measure_latency", "measure_onnx_latency", "onnx_available"]

#: the fewest timed runs of a budgeted measurement, however slow the model (a median and a spread need a few)
MIN_RUNS = 3


@dataclass(frozen=True)
class Latency:
    """Median and spread (min / max) of ``runs`` timed forward passes of a ``batch_size`` input, in milliseconds,
    after ``warmup`` untimed ones; ``budget_s`` is the time budget that chose ``runs`` (None: a fixed count)."""

    batch_size: int
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    device: str
    backend: str
    budget_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _check(runs: int, warmup: int, batch_size: int, budget_s: float | None = None) -> None:
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"runs and batch_size must be >= 1 and warmup >= 0, got {runs}, {batch_size}, {warmup}")
    if budget_s is not None and not budget_s > 0:
        raise ValueError(f"budget_s must be > 0 seconds (or None for a fixed number of runs), got {budget_s}")


def _time(call: Callable[[], object], runs: int, warmup: int, sync: Callable[[], None],
          budget_s: float | None = None) -> list[float]:
    """Milliseconds of each timed call after ``warmup`` untimed ones: ``runs`` of them, or with ``budget_s`` as many
    as fit in the budget (counted from the first warm-up call), at least ``min(MIN_RUNS, runs)`` and at most
    ``runs``."""
    started = time.perf_counter()
    for _ in range(warmup):
        sync()
        call()
        sync()
    times: list[float] = []
    while len(times) < runs:
        sync()
        start = time.perf_counter()
        call()
        sync()
        now = time.perf_counter()
        times.append(1000.0 * (now - start))
        # stop before a run that would overrun the budget (the last run predicts the next)
        if budget_s is not None and len(times) >= MIN_RUNS and now - started + (now - start) > budget_s:
            break
    return times


def measure_latency(model: nn.Module, input_size: tuple[int, ...], batch_size: int = 1, *, runs: int = 20,
                    warmup: int = 5, device: str | torch.device | None = None,
                    budget_s: float | None = None) -> Latency:
    """Time ``model`` on a random ``(batch_size, *input_size)`` input on ``device`` (default: the model's):
    ``warmup`` untimed runs, then ``runs`` timed ones, or with ``budget_s`` as many as fit in that many seconds
    (warm-up included; at least :data:`MIN_RUNS`, at most ``runs``). ``Latency.runs`` says how many were timed.

    The model is put in eval mode for the measurement and its training mode restored afterwards."""
    _check(runs, warmup, batch_size, budget_s)
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else
                                                              torch.device("cpu"))
    x = torch.randn(batch_size, *input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            times = _time(lambda: model(x), runs, warmup, sync, budget_s)
    finally:
        model.train(was_training)
    return _latency(batch_size, times, warmup, str(device), "pytorch", budget_s)


def _latency(batch_size: int, times: list[float], warmup: int, device: str, backend: str,
             budget_s: float | None) -> Latency:
    return Latency(batch_size, statistics.median(times), min(times), max(times), len(times), warmup, device,
                   backend, budget_s)


def onnx_available() -> bool:
    """Whether ``onnx``, ``onnxscript`` and ``onnxruntime`` can be imported (the ``[onnx]`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def measure_onnx_latency(model: nn.Module, input_size: tuple[int, ...], batch_sizes: tuple[int, ...] = (1, 32), *,
                         runs: int = 20, warmup: int = 5, budget_s: float | None = None) -> list[Latency]:
    """Export ``model`` (on CPU, eval mode, a dynamic batch dimension) to ONNX once and time ONNX Runtime's CPU
    provider at each of ``batch_sizes`` (``runs``, ``warmup`` and ``budget_s`` as in :func:`measure_latency`, the
    budget for each batch size).

    Raises:
        ImportError: the ``[onnx]`` extra is not installed (the message says how to install it).
        RuntimeError: the model cannot be exported (the exporter's first line).
    """
    for b in batch_sizes:
        _check(runs, warmup, b, budget_s)
    if not onnx_available():
        raise ImportError("ONNX latency needs onnx, onnxscript and onnxruntime: pip install "
                          "'entropy-importance[onnx]'")
    import copy

    import onnxruntime as ort

    cpu = copy.deepcopy(model).cpu().eval()
    example = torch.randn(max(2, batch_sizes[0]), *input_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                torch.onnx.export(cpu, (example,), path, input_names=["x"], output_names=["y"],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
        except Exception as e:  # noqa: BLE001 - the exporter raises many types; one line is reported
            raise RuntimeError(f"ONNX export failed: {first_line(e)}") from None
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = []
    for b in batch_sizes:
        feed = {name: torch.randn(b, *input_size).numpy()}
        times = _time(lambda feed=feed: session.run(None, feed), runs, warmup, lambda: None, budget_s)
        results.append(_latency(b, times, warmup, "cpu", "onnxruntime", budget_s))
    return results
