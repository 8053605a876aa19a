"""``entropy-prune`` end to end in a subprocess, and saved models that reload with identical outputs."""

import json
import subprocess
import sys

import pytest
import timm
import torch

from entropy_importance.data import find_fashion_mnist
from entropy_importance.engine import count_params
from entropy_importance.serialization import load_pruned

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
        (["--data", "fashion-mnist"], "is data-free: --data would not be used"),
        (["--input-size", "3", "0", "0"], "--input-size must be three positive integers"),
        (["--num-classes", "0"], "--num-classes must be a positive integer"),
        (["--speed-up", "0.5"], "--speed-up must be > 1"),
        (["--model-arg", "oops"], "expected KEY=VALUE"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


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
