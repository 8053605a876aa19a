"""Measured inference latency: what a MAC speed-up is worth on a real device.

``measure_latency`` times the PyTorch model under ``torch.inference_mode`` (CUDA synchronised before and after each
run); ``measure_onnx_latency`` exports it to ONNX and times ONNX Runtime's CPU provider (optional extra:
``pip install entropy-importance[onnx]``). Both report the median of ``runs`` runs after ``warmup`` untimed ones.
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

__all__ = ["Latency", "measure_latency", "measure_onnx_latency", "onnx_available"]


@dataclass(frozen=True)
class Latency:
    """Median and spread of ``runs`` timed forward passes of a ``batch_size`` input, in milliseconds."""

    batch_size: int
    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    device: str
    backend: str

    def to_dict(self) -> dict:
        return asdict(self)


def _check(runs: int, warmup: int, batch_size: int) -> None:
    if runs < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"runs and batch_size must be >= 1 and warmup >= 0, got {runs}, {batch_size}, {warmup}")


def _time(call: Callable[[], object], runs: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    times = []
    for i in range(warmup + runs):
        sync()
        start = time.perf_counter()
        call()
        sync()
        if i >= warmup:
            times.append(1000.0 * (time.perf_counter() - start))
    return times


def measure_latency(model: nn.Module, input_size: tuple[int, ...], batch_size: int = 1, *, runs: int = 20,
                    warmup: int = 5, device: str | torch.device | None = None) -> Latency:
    """Time ``model`` on a random ``(batch_size, *input_size)`` input on ``device`` (default: the model's).

    The model is put in eval mode for the measurement and its training mode restored afterwards."""
    _check(runs, warmup, batch_size)
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else
                                                              torch.device("cpu"))
    x = torch.randn(batch_size, *input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            times = _time(lambda: model(x), runs, warmup, sync)
    finally:
        model.train(was_training)
    return Latency(batch_size, statistics.median(times), min(times), max(times), runs, warmup, str(device),
                   "pytorch")


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
                         runs: int = 20, warmup: int = 5) -> list[Latency]:
    """Export ``model`` (on CPU, eval mode, a dynamic batch dimension) to ONNX once and time ONNX Runtime's CPU
    provider at each of ``batch_sizes``.

    Raises:
        ImportError: the ``[onnx]`` extra is not installed (the message says how to install it).
        RuntimeError: the model cannot be exported (the exporter's first line).
    """
    for b in batch_sizes:
        _check(runs, warmup, b)
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
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"ONNX export failed: {first}") from None
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    results = []
    for b in batch_sizes:
        feed = {name: torch.randn(b, *input_size).numpy()}
        times = _time(lambda feed=feed: session.run(None, feed), runs, warmup, lambda: None)
        results.append(Latency(b, statistics.median(times), min(times), max(times), runs, warmup, "cpu",
                               "onnxruntime"))
    return results
