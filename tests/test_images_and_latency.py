"""Calibration images from a user's folder, preprocessed per model (planted constant images against hand-computed
normalisation), and latency measurement (a planted sleep)."""

import time

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from entropy_importance.data import DataError, calibration_batches, image_folder, model_transform
from entropy_importance.latency import MIN_RUNS, measure_latency, measure_onnx_latency, onnx_available
from entropy_importance.models import create_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _constant_image(path, rgb, size=(50, 40)):
    Image.fromarray(np.full((size[1], size[0], 3), rgb, dtype=np.uint8)).save(path)


@pytest.mark.parametrize(
    "spec, mean, std",
    [
        ("torchvision:resnet18", IMAGENET_MEAN, IMAGENET_STD),
        ("timm:resnet18", IMAGENET_MEAN, IMAGENET_STD),
        ("timm:vit_tiny_patch16_224", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # timm's ViT: Inception normalisation
    ],
)
def test_model_transform_normalises_as_the_model_expects(tmp_path, spec, mean, std):
    rgb = (200, 100, 30)
    _constant_image(tmp_path / "a.png", rgb)
    transform = model_transform(create_model(spec), (3, 96, 96))
    x = transform(Image.open(tmp_path / "a.png").convert("RGB"))
    assert x.shape == (3, 96, 96)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(rgb, mean, std, strict=True)])
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=2e-2)
    assert float(x.std(dim=(1, 2)).max()) < 2e-2  # a constant image stays constant through resize and crop


def test_image_folder_with_classes_and_flat(tmp_path):
    for c, rgb in (("a", (0, 0, 0)), ("b", (255, 255, 255))):
        (tmp_path / "classes" / c).mkdir(parents=True)
        for i in range(3):
            _constant_image(tmp_path / "classes" / c / f"{i}.png", rgb)
    transform = model_transform(timm.create_model("resnet18"), (3, 32, 32))
    data = image_folder(tmp_path / "classes", transform)
    batches = calibration_batches(data, batches=2, batch_size=4)
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.shape == (6, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    white = images[labels == 1].mean(dim=(0, 2, 3))  # class "b" holds the white images
    assert torch.allclose(white, torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD,
                                                                               strict=True)]), atol=2e-2)
    (tmp_path / "flat").mkdir()
    for i in range(5):
        _constant_image(tmp_path / "flat" / f"{i}.jpg", (10, 20, 30))
    flat = calibration_batches(image_folder(tmp_path / "flat", transform), batches=3, batch_size=2)
    assert [len(y) for _, y in flat] == [2, 2, 1] and all((y == -1).all() for _, y in flat)


def test_image_folder_errors_name_the_problem(tmp_path):
    transform = model_transform(timm.create_model("resnet18"), (3, 32, 32))
    with pytest.raises(DataError, match="does not exist"):
        image_folder(tmp_path / "missing", transform)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        image_folder(tmp_path / "empty", transform)
    (tmp_path / "bad").mkdir()
    _constant_image(tmp_path / "bad" / "good.png", (1, 2, 3))
    (tmp_path / "bad" / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"broken\.png is not a readable image"):
        calibration_batches(image_folder(tmp_path / "bad", transform), batches=1, batch_size=2)


class _Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls, self.grad_enabled = seconds, 0, []
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        self.calls += 1
        self.grad_enabled.append(torch.is_grad_enabled())
        time.sleep(self.seconds)
        return self.lin(x)


def test_measure_latency_times_the_model_and_restores_its_mode():
    model = _Sleeper(0.004).train()
    t = measure_latency(model, (4,), batch_size=3, runs=20, warmup=5)
    assert model.calls == 25 and t.runs == 20 and t.batch_size == 3
    assert 4.0 <= t.min_ms <= t.median_ms <= t.max_ms and t.median_ms < 60.0
    assert not any(model.grad_enabled)  # inference mode
    assert model.training  # restored
    with pytest.raises(ValueError, match="runs"):
        measure_latency(model, (4,), runs=0)


def test_budgeted_latency_fills_its_budget_and_no_more():
    """A model that sleeps 40 ms: a 0.5 s budget (warm-up included) holds the warm-up and about 11 timed runs; the
    last run that fits is the last one made."""
    model = _Sleeper(0.04)
    start = time.perf_counter()
    t = measure_latency(model, (4,), runs=1000, warmup=1, budget_s=0.5)
    took = time.perf_counter() - start
    assert model.calls == t.runs + 1 and t.budget_s == 0.5 and t.warmup == 1
    assert 7 <= t.runs <= 11  # 0.5 s / 40 ms = 12.5 calls, the warm-up one of them; sleeps only overrun
    assert took <= 0.5 + 0.04 + 0.1  # at most one run over (the stop predicts the next run from the last)
    assert 40.0 <= t.min_ms <= t.median_ms <= t.max_ms


def test_budgeted_latency_times_a_slow_model_min_runs_times_and_stops_at_the_cap():
    slow = _Sleeper(0.15)
    t = measure_latency(slow, (4,), runs=1000, warmup=1, budget_s=0.1)  # one run alone overruns the budget
    assert t.runs == MIN_RUNS == 3 and slow.calls == 4
    fast = _Sleeper(0.0)
    t = measure_latency(fast, (4,), runs=7, warmup=2, budget_s=30.0)  # the cap comes long before the budget
    assert t.runs == 7 and fast.calls == 9 and t.to_dict()["runs"] == 7
    fixed = measure_latency(_Sleeper(0.0), (4,), runs=5, warmup=0)
    assert fixed.runs == 5 and fixed.budget_s is None
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        measure_latency(fast, (4,), budget_s=0)


@pytest.mark.skipif(not onnx_available(), reason="the [onnx] extra is not installed")
def test_onnx_latency_exports_and_times_each_batch_size():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5))
    times = measure_onnx_latency(model, (3, 16, 16), (1, 4), runs=3, warmup=1)
    assert [t.batch_size for t in times] == [1, 4]
    assert all(t.backend == "onnxruntime" and t.median_ms > 0 and t.runs == 3 for t in times)
    start = time.perf_counter()
    budgeted = measure_onnx_latency(model, (3, 16, 16), (1,), runs=10**6, warmup=1, budget_s=0.3)
    assert budgeted[0].budget_s == 0.3 and MIN_RUNS <= budgeted[0].runs < 10**6
    assert time.perf_counter() - start < 0.3 + 10  # the export, then about the budget
