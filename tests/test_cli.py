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
def test_cli_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, args, message):
    from entropy_importance.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["--out", "pruned.pt"] + args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_error_exit_status_from_the_command_line(tmp_path):
    proc = subprocess.run(CLI + ["--criterion", "no-such-criterion"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown importance" in proc.stderr


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


def _image_folder(root, classes=("a", "b"), per_class=6, size=(48, 40)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_cli_prunes_a_pretrained_file_calibrated_on_an_image_folder_to_a_speed_up(tmp_path):
    """The practitioner's run: a timm model from a local pretrained file (timm's own loader, through
    ``pretrained_cfg_overlay``), calibrated on an image folder, pruned to 2x MACs, with measured latency."""
    import torch_pruning as tp

    torch.manual_seed(1)
    weights = timm.create_model("resnet10t").state_dict()
    torch.save(weights, tmp_path / "resnet10t.pth")
    images = _image_folder(tmp_path / "images")
    out, report = tmp_path / "pruned.pt", tmp_path / "report.json"
    proc = subprocess.run(
        CLI + ["timm:resnet10t", "--pretrained", "--model-arg",
               f"pretrained_cfg_overlay={{'file': '{tmp_path / 'resnet10t.pth'}'}}", "--criterion", "gap-entropy",
               "--data", f"imagefolder:{images}", "--calibration-batches", "2", "--batch-size", "4",
               "--speed-up", "2", "--input-size", "3", "64", "64", "--latency-batch-sizes", "1", "32",
               "--out", str(out), "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["weights"] == "pretrained" and r["data"] == f"imagefolder:{images}" and r["calibration_images"] == 8
    lat = r["latency"]
    assert lat["runs"] >= 20 and lat["device"] == "cpu"
    for when in ("before", "after"):
        for batch in ("1", "32"):
            t = lat["pytorch"][when][batch]
            assert t["runs"] == lat["runs"] and 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    assert "latency cpu b32 (ms)" in proc.stdout
    # the speed-up, counted again here on the reloaded model with Torch-Pruning's counter
    model = load_pruned(out)
    x = torch.randn(1, 3, 64, 64)
    base_macs, _ = tp.utils.count_ops_and_params(timm.create_model("resnet10t"), x)
    pruned_macs, _ = tp.utils.count_ops_and_params(model, x)
    assert base_macs / pruned_macs >= 2.0
    # the weights pruned were the file's: every kept stem filter is one of the file's filters
    kept, original = model.conv1[0].weight.detach(), weights["conv1.0.weight"]
    assert kept.shape[0] < original.shape[0]
    distances = torch.cdist(kept.flatten(1), original.flatten(1))
    assert float(distances.min(dim=1).values.max()) < 1e-6


def test_cli_onnx_latency(tmp_path):
    from entropy_importance.latency import onnx_available

    if not onnx_available():
        pytest.skip("the [onnx] extra is not installed")
    report = tmp_path / "report.json"
    proc = subprocess.run(
        CLI + ["timm:resnet10t", "--criterion", "tp-magnitude-l1", "--input-size", "3", "32", "32", "--onnx",
               "--latency-runs", "20", "--latency-batch-sizes", "1", "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    onnx = json.loads(report.read_text())["latency"]["onnxruntime"]
    assert onnx["before"]["1"]["backend"] == "onnxruntime" and onnx["after"]["1"]["median_ms"] > 0


def test_cli_bad_data_and_weights_are_one_line(tmp_path, capsys):
    import os

    from entropy_importance.cli import main

    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    broken = _image_folder(tmp_path / "broken", per_class=2)
    (broken / "a" / "zz_broken.png").write_bytes(b"definitely not a PNG")
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (broken / "b").iterdir():
        (flat / f.name).write_bytes(f.read_bytes())
    one_class = _image_folder(tmp_path / "one_class", classes=("only",), per_class=4)
    (tmp_path / "noise.pt").write_bytes(os.urandom(2048))
    small = ["timm:resnet10t", "--input-size", "3", "32", "32", "--no-latency", "--calibration-batches", "1",
             "--batch-size", "8", "--out", str(work / "o.pt"), "--json", str(work / "r.json")]
    cases = [
        (["--criterion", "gap-entropy", "--data", f"imagefolder:{tmp_path / 'empty'}"], "holds no images"),
        (["--criterion", "gap-entropy", "--data", f"imagefolder:{broken}", "--calibration-batches", "2"],
         "zz_broken.png is not a readable image"),
        (["--criterion", "gap-entropy", "--data", f"imagefolder:{tmp_path / 'nowhere'}"], "does not exist"),
        (["--criterion", "conditional-entropy", "--data", f"imagefolder:{flat}"], "no class subfolders"),
        (["--criterion", "conditional-entropy", "--data", f"imagefolder:{one_class}"], "all of one class"),
        (["--criterion", "gap-entropy", "--data", "cifar10:" + str(tmp_path)], "add --download"),
        (["--criterion", "gap-entropy", "--data", "mnist"], "expected fashion-mnist, imagefolder:DIR"),
        (["--download"], "--download needs --data cifar10:DIR"),
        (["--criterion", "information-capacity", "--data", f"imagefolder:{one_class}"], "is data-free"),
        (["--pretrained", "--checkpoint", str(tmp_path / "noise.pt")], "give one"),
        (["--checkpoint", str(tmp_path / "noise.pt")], "cannot read"),
        (["--onnx", "--no-latency"], "drop --no-latency"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--latency-runs", "0"], "--latency-runs must be a positive integer"),
        (["--device", "tpu"], "expected cpu, cuda or cuda:N"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device is available"))
    for args, message in cases:
        capsys.readouterr()
        assert main(small + args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (args, err)
    # a damaged saved model given as MODEL
    capsys.readouterr()
    assert main([str(tmp_path / "noise.pt"), "--no-latency", "--out", str(work / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "noise.pt" in err, err
    assert list(work.iterdir()) == []  # nothing written


def test_cli_pretrained_offline_names_the_cache_and_the_alternative(tmp_path):
    import os

    cache = tmp_path / "hf-cache"
    proc = subprocess.run(CLI + ["timm:resnet10t", "--pretrained", "--no-latency", "--out", str(tmp_path / "o.pt")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(cache) in lines[0] and "--checkpoint FILE" in lines[0]
    assert not (tmp_path / "o.pt").exists()
