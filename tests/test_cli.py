"""``entropy-prune`` end to end in a subprocess, and saved models that reload with identical outputs."""

import json
import subprocess
import sys

import pytest
import timm
import torch
import torch_pruning as tp

from entropy_importance import create_importance
from entropy_importance.engine import count_params
from entropy_importance.data import find_fashion_mnist
from entropy_importance.engine import attention_num_heads, classifier_layers, sync_attention_heads
from entropy_importance.serialization import PrunedModelRecord, load_pruned, save_pruned

CLI = [sys.executable, "-m", "entropy_importance.cli"]


def test_cli_end_to_end(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "weights.pt"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), ckpt)
    out, report = tmp_path / "pruned.pt", tmp_path / "report.json"
    proc = subprocess.run(
        CLI + ["timm:resnet18", "--num-classes", "10", "--criterion", "information-capacity", "--ratio", "0.5",
               "--input-size", "3", "64", "64", "--round-to", "8", "--checkpoint", str(ckpt),
               "--out", str(out), "--json", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "MACs (thop)" in proc.stdout and "widths per stage" in proc.stdout
    assert "weights are random" not in proc.stdout
    r = json.loads(report.read_text())
    assert r["after"]["params"] < r["before"]["params"]
    assert r["after"]["macs"]["tp"] < r["before"]["macs"]["tp"]
    assert r["after"]["widths"]["layer4"] == 256
    model = load_pruned(out)
    assert count_params(model) == r["after"]["params"]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--criterion", "no-such-criterion"], "unknown importance 'no-such-criterion'"),
        (["--ratio", "1.5"], "--ratio must be in [0, 1)"),
        (["timm:no_such_model"], "unknown timm model"),
        (["--out", "/no/such/dir/x.pt"], "does not exist"),
        (["--criterion", "gap-entropy"], "needs calibration images: add --data fashion-mnist"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_saved_model_reloads_with_identical_outputs(tmp_path, name):
    torch.manual_seed(1)
    kwargs = {"img_size": 64} if "vit" in name else {}
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=create_importance("channel-similarity-entropy"), pruning_ratio=0.4,
        ignored_layers=classifier_layers(model), num_heads=attention_num_heads(model),
    )
    pruner.step()
    sync_attention_heads(model)
    path = tmp_path / "m.pt"
    record = PrunedModelRecord(f"timm:{name}", (3, 64, 64), 10, pruner.pruning_history(), model_kwargs=kwargs)
    save_pruned(path, model, record)
    reloaded = load_pruned(path)
    assert torch.equal(reloaded(x), model(x))


@pytest.mark.skipif(find_fashion_mnist() is None, reason="needs dataset-fashion-mnist (installed by .ci/run)")
@pytest.mark.parametrize("criterion", ["tp-activation", "tp-taylor", "conditional-entropy"])
def test_cli_refreshes_every_data_dependent_criterion(tmp_path, criterion):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        CLI + ["--criterion", criterion, "--data", "fashion-mnist", "--calibration-batches", "1",
               "--input-size", "3", "64", "64", "--json", str(report)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["after"]["widths"]["layer4"] == 256 and r["after"]["params"] < r["before"]["params"]
    assert "does not have _importance" not in proc.stderr  # activation statistics were collected
