"""The real-data comparison benchmark: statistics of the report (hand-computed) and a tiny end-to-end run."""

import json
import math

import pytest
import torch.nn as nn

from benchmarks import compare
from benchmarks.compare_report import BEGIN, END, ablation_decisions, binomial_se_diff, verdicts, write_report
from entropy_importance.data import find_fashion_mnist
from recipes import training as cifar_training


def test_binomial_standard_error_of_a_difference():
    assert binomial_se_diff(90.0, 2000) == pytest.approx(100 * math.sqrt(2 * 0.9 * 0.1 / 2000))
    assert binomial_se_diff(50.0, 10000) == pytest.approx(0.7071, abs=1e-4)


def _ablation(value, val, option="bins"):
    return {"kind": "ablation", "arch": "a", "seed": 0, "mode": "local", "criterion": "gap-entropy",
            "options": {option: value}, "val": val, "n_val": 2000}


def test_an_alternative_replaces_the_default_only_beyond_two_standard_errors():
    # 2 SE at 80 % on 2000 images: 2 * 100 * sqrt(2 * 0.8 * 0.2 / 2000) = 2.53 points
    rows = [_ablation(None, 80.0), _ablation(16, 83.0), _ablation(64, 79.0)]
    rows[0]["options"] = {}  # the default configuration is run once, with no options
    (d,) = ablation_decisions(rows, {"gap-entropy": {"bins": [None, 16, 64]}}, {})
    assert d["threshold"] == pytest.approx(2.5298, abs=1e-3)
    assert d["best"] == 16 and d["chosen"] == 16
    rows[1]["val"] = 82.0
    (d,) = ablation_decisions(rows, {"gap-entropy": {"bins": [None, 16, 64]}}, {})
    assert d["best"] == 16 and d["chosen"] is None


def test_verdict_compares_best_of_ours_with_best_builtin_excluding_random():
    cell = lambda v: {"test": [v], "test_bn": [v], "test_ft": [v]}  # noqa: E731
    table = {("a", "local", 2.0): {"gap-entropy": cell(85.0), "tp-magnitude-l1": cell(80.0),
                                   "tp-random": cell(95.0)}}
    rows = {v["metric"]: v for v in verdicts(table, n_test=2000)}
    # 2 SE at 80 % on 2000 images = 2.53: a 5-point lead is a win
    assert rows["test"]["outcome"] == "win" and rows["test"]["best_builtin"] == "tp-magnitude-l1"
    table[("a", "local", 2.0)]["gap-entropy"] = cell(82.0)
    assert verdicts(table, n_test=2000)[0]["outcome"] == "tie"


class Tiny(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


@pytest.mark.skipif(find_fashion_mnist() is None, reason="needs dataset-fashion-mnist (installed by .ci/run)")
def test_tiny_end_to_end_run_resumes_and_reports(tmp_path, monkeypatch):
    monkeypatch.setitem(cifar_training.ARCHITECTURES, "tiny", Tiny)
    monkeypatch.setattr(compare, "OURS", ["gap-entropy"])
    monkeypatch.setattr(compare, "BUILTINS", ["tp-magnitude-l1", "tp-random"])
    monkeypatch.setattr(compare, "ABLATIONS", {"gap-entropy": {"where": ["input", "output"]}})
    monkeypatch.setattr(compare, "NORMALIZERS", {"gap-entropy": ["mean", "max"]})
    cfg = compare.Config(archs=["tiny"], seeds=[0], train_limit=600, val_limit=200, test_limit=200, epochs=1,
                         modes=["local"], steps=20, calibration_batches=2, calibration_batch_size=32,
                         finetune_images=128, ablation_archs=["tiny"])
    results = tmp_path / "r.jsonl"
    compare.run_grid(cfg, results, tmp_path / "ck")
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    prunes = [r for r in rows if r["kind"] == "prune"]
    assert {(r["criterion"], r["target"]) for r in prunes} == {
        (c, t) for c in ("gap-entropy", "tp-magnitude-l1", "tp-random") for t in (2.0, 3.0)}
    assert all(r["speed_up"] >= r["target"] and 0 <= r["test_ft"] <= 100 for r in prunes)
    assert sum(r["kind"] == "ablation" for r in rows) == 4  # default (local, global), where=output, normalizer=max
    compare.run_grid(cfg, results, tmp_path / "ck")  # resumes: nothing new
    assert len(results.read_text().splitlines()) == len(rows)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "benchmarks.md").write_text("# Benchmarks\n\nhand-written part\n")
    write_report(results, tmp_path / "docs", {"test_limit": 200}, "test", compare.ABLATIONS, compare.NORMALIZERS)
    md = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert md.startswith("# Benchmarks\n\nhand-written part") and BEGIN in md and END in md
    assert "### tiny, local ranking" in md and "★ gap-entropy" in md
