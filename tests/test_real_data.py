"""The one-line swap with real images: Fashion-MNIST (provisioned by scripts/test; absent, these tests fail)."""

import pytest
import torch
import torch_pruning as tp
from torch.utils.data import DataLoader

from entropy_importance import EntropyPruner, create_importance, list_importances
from entropy_importance.data import fashion_mnist
from entropy_importance.engine import classifier_layers
from entropy_importance.models import create_model

pytestmark = pytest.mark.usefixtures("fashion_mnist_dir")  # fails, never skips, without the data

DATA_DRIVEN = ["conditional-entropy", "feature-map-entropy", "gap-entropy"]
MODELS = ["torchvision:resnet18", "torchvision:mobilenet_v2", "timm:convnext_atto", "timm:efficientnet_b0"]


@pytest.fixture(scope="module")
def loader():
    return DataLoader(fashion_mnist("train", limit=64), batch_size=32)


def test_data_driven_criteria_are_registered_as_needing_data():
    from entropy_importance import get_importance_info

    assert all(get_importance_info(n).needs_data for n in DATA_DRIVEN)
    assert set(DATA_DRIVEN) < set(list_importances())


@pytest.mark.parametrize("name", DATA_DRIVEN)
@pytest.mark.parametrize("spec", MODELS)
def test_one_line_swap_with_real_images(spec, name, loader):
    torch.manual_seed(0)
    model = create_model(spec, num_classes=10).eval()
    x = next(iter(loader))[0][:2]
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(
        model, x, importance=create_importance(name).calibrate(model, loader),  # <- the one line
        pruning_ratio=0.5, ignored_layers=classifier_layers(model),
    )
    pruner.step()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert sum(p.numel() for p in model.parameters()) < before


def test_entropy_pruner_on_real_images(loader):
    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    x = next(iter(loader))[0][:2]
    pruner = EntropyPruner(model, x, create_importance("conditional-entropy"), calibration_data=loader,
                           pruning_ratio=0.5, iterative_steps=2, ignored_layers=[model.fc])
    pruner.step()
    pruner.step()
    assert model.layer4[0].conv1.out_channels == 256
    assert model(x).shape == (2, 10)


def test_cli_with_a_data_driven_criterion(tmp_path):
    import json
    import subprocess
    import sys

    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "entropy_importance.cli", "torchvision:mobilenet_v2", "--num-classes", "10",
         "--criterion", "conditional-entropy", "--data", "fashion-mnist", "--calibration-batches", "2",
         "--input-size", "3", "32", "32", "--json", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["data"] == "fashion-mnist" and r["after"]["params"] < r["before"]["params"]


def test_reader_matches_known_labels():
    test = fashion_mnist("test", limit=10)
    assert test.tensors[1].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the published first test labels
    assert test.tensors[0].shape == (10, 3, 32, 32)
    assert len(fashion_mnist("train")) == 60000
