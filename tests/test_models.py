"""Curated sweep in the pattern of timm's tests/test_models.py: ``prune()`` on fast models across families x
every criterion. The full sweep (every timm family, torchvision classification + detection) is
``python scripts/sweep.py``, which writes docs/coverage.md."""

import json

import pytest
import torch

from benchmarks.curated import BUILD_KWARGS, CURATED_MODELS, build_curated
from entropy_importance import cli, list_importances, load_pruned, prune, save_pruned
from entropy_importance.engine import batch_size, count_params, forward, output_signature, tp_macs

CRITERIA = list_importances(source="entropy-importance")

FAST_MODELS = CURATED_MODELS


_build = build_curated


# Every criterion on these (each a different kind of dependency graph); on every other family the criterion whose
# result is saved and reloaded (so every model's save / load is checked). The rest of the cross product is marked
# slow (pytest -m slow runs it; scripts/sweep.py covers every timm family and torchvision model with every criterion).
ALL_CRITERIA_ON = {"timm:resnet18", "timm:mobilenetv3_small_050", "timm:vit_tiny_patch16_224", "timm:cspresnet50",
                   "timm:rexnet_100", "torchvision:ssdlite320_mobilenet_v3_large"}


SAVED = "information-capacity"
CASES = [pytest.param(spec, size, c, id=f"{spec}-{c}",
                      marks=() if spec in ALL_CRITERIA_ON or c == SAVED else pytest.mark.slow)
         for spec, size in FAST_MODELS for c in CRITERIA]


@pytest.mark.parametrize("spec, size, criterion", CASES)
def test_prune_model(spec, size, criterion, tmp_path):
    model, x = _build(spec, size)
    reference = output_signature(forward(model, x), batch_size(x))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 3, size, size, generator=g), torch.randint(0, 10, (2,), generator=g)) for _ in range(2)]
    pruned, report = prune(model, x, criterion, ratio=0.5, calibration_data=data)
    assert output_signature(forward(pruned, x), batch_size(x)) == reference
    assert report.params_after < report.params_before
    macs = tp_macs(pruned, x)
    assert macs is None or report.macs_before is None or macs < report.macs_before
    if criterion == SAVED:  # saved and reloaded by name: identical outputs
        path = tmp_path / "pruned.pt"
        save_pruned(path, pruned)
        assert _identical(forward(load_pruned(path), x), forward(pruned, x))


def _identical(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_identical, a, b))
    return a == b


# the CLI on a plain CNN, a model needing --model-arg, a CSP model and a detector; every model is marked slow
CLI_DEFAULT = {"timm:resnet18", "timm:swin_tiny_patch4_window7_224", "timm:cspresnet50",
               "torchvision:ssdlite320_mobilenet_v3_large"}


@pytest.mark.parametrize("spec, size", [pytest.param(spec, size, id=spec, marks=() if spec in CLI_DEFAULT
                                                     else pytest.mark.slow) for spec, size in FAST_MODELS])
def test_cli_prunes_model(spec, size, tmp_path, capsys):
    out, report = tmp_path / "pruned.pt", tmp_path / "report.json"
    args = [spec, "--criterion", SAVED, "--input-size", "3", str(size), str(size), "--out", str(out),
            "--json", str(report), "--latency-runs", "2", "--latency-batch-sizes", "2"]
    args += [] if spec.startswith("torchvision:ssd") else ["--num-classes", "10"]
    args += [f"--model-arg={k}={v}" for k, v in BUILD_KWARGS.get(spec, {}).items()]
    assert cli.main(args) == 0, capsys.readouterr().err
    result = json.loads(report.read_text())
    model = load_pruned(out)
    assert count_params(model) == result["after"]["params"] < result["before"]["params"]
    x = torch.randn(1, 3, size, size)
    base, _ = _build(spec, size)
    assert output_signature(forward(model, x), 1) == output_signature(forward(base, x), 1)
