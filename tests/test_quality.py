"""The criteria-quality benchmark: its statistics against scipy and hand-computed cases, the report from synthetic
rows, the one training loop's batching and BatchNorm re-estimation against numpy, and the quick mode end to end."""

import importlib.util
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import stats
from torch.utils.data import Subset, TensorDataset

from benchmarks import quality
from benchmarks.quality_report import sizing, write_report
from benchmarks.quality_stats import Cell, comparisons, paired_interval, t_cdf, t_quantile
from entropy_importance.data import find_fashion_mnist
from recipes.fmnist_models import FMNIST_MODELS
from recipes.trainer import Runtime, _batched
from recipes.training import Split, recalibrate_batchnorm, train

HAS_FMNIST = find_fashion_mnist() is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


# ------------------------------------------------------------------------------------------------ statistics
@pytest.mark.parametrize("df", [1, 2, 3, 5, 9, 29])
def test_t_quantile_and_cdf_against_scipy(df):
    for p in (0.9, 0.975, 0.995):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
    for x in (-3.0, -0.4, 0.0, 1.3, 7.5):
        assert t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-10)


def test_t_quantile_by_hand():
    # textbook values of t_{0.975}: 12.706 (1 df), 4.303 (2 df), 2.262 (9 df)
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 9) == pytest.approx(2.2622, abs=1e-4)


def test_paired_interval_by_hand_and_against_scipy():
    # differences 1, 2, 3: mean 2, sd 1, half-width 4.3027 / sqrt(3) = 2.4842 -> a tie
    iv = paired_interval([91.0, 93.0, 95.0], [90.0, 91.0, 92.0])
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5) and iv.verdict == "tie"
    expected = stats.ttest_rel([91.0, 93.0, 95.0], [90.0, 91.0, 92.0]).confidence_interval(0.95)
    assert (iv.low, iv.high) == pytest.approx((expected.low, expected.high), abs=1e-9)
    # differences 0.9, 1.0, 1.1: half-width 4.3027 * 0.1 / sqrt(3) = 0.2484 -> the interval excludes 0
    assert paired_interval([1.9, 2.0, 2.1], [1.0, 1.0, 1.0]).verdict == "better"
    assert paired_interval([1.0, 1.0, 1.0], [1.9, 2.0, 2.1]).verdict == "worse"
    one = paired_interval([5.0], [3.0])
    assert one.mean == 2.0 and one.low is None and one.verdict == "n/a"


def _cell(method, top1, key=("a", "local", 2.0, "ft"), val=None):
    return Cell(*key, method, dict(enumerate(top1)), 0.5, 0.5, False, None if val is None else dict(enumerate(val)))


def test_reference_is_the_best_builtin_by_mean_without_random_and_pairs_by_seed():
    key = ("a", "local", 2.0, "ft")
    table = {key: {"gap-entropy": _cell("gap-entropy", [80, 81, 82]),
                   "tp-magnitude-l1": _cell("tp-magnitude-l1", [70, 71, 72]),
                   "tp-lamp": _cell("tp-lamp", [79, 79, 81]),
                   "tp-random": _cell("tp-random", [99, 99, 99])}}
    by = {c.method: c for c in comparisons(table, {"tp-magnitude-l1", "tp-lamp", "tp-random"})}
    assert by["gap-entropy"].reference == "tp-lamp"  # mean 79.67 beats 71; random is never the reference
    # paired: 80-79, 81-79, 82-81 = 1, 2, 1
    assert by["gap-entropy"].vs_reference.mean == pytest.approx(4 / 3)
    assert by["tp-lamp"].vs_reference is None and by["tp-random"].vs_random is None
    assert by["tp-random"].vs_reference.mean == pytest.approx(99 - (79 + 79 + 81) / 3)  # random is compared too
    assert by["gap-entropy"].vs_random.verdict == "worse"
    # with validation numbers the reference is chosen on them, not on the test set
    table[key]["tp-magnitude-l1"] = _cell("tp-magnitude-l1", [70, 71, 72], val=[90, 90, 90])
    table[key]["tp-lamp"] = _cell("tp-lamp", [79, 79, 81], val=[80, 80, 80])
    by = {c.method: c for c in comparisons(table, {"tp-magnitude-l1", "tp-lamp", "tp-random"})}
    assert by["gap-entropy"].reference == "tp-magnitude-l1" and by["gap-entropy"].vs_reference.mean == 10.0


# ------------------------------------------------------------------------------------------------ report
def _rows(cfg, ours_offset):
    """Synthetic rows: two of ours, three built-ins and random, three seeds, one arch, local 2x, two regimes."""
    rows = []
    for seed in cfg.seeds:
        rows.append({"kind": "base", "config": cfg.name, "setup_base": cfg.base_id("vgg"), "arch": "vgg",
                     "seed": seed, "top1": 93.0 + seed / 10, "val_top1": 93.5, "params": 288170, "macs": 29.4e6,
                     "train_images": 55000, "n_val": 5000, "n_test": 10000, "seconds": 600.0})
        for regime in ("none", "ft"):
            for method, top1 in (("gap-entropy", 85 + ours_offset + seed * 0.5), ("information-capacity", 80 + seed),
                                 ("tp-magnitude-l2", 85 + seed * 0.5), ("tp-lamp", 84 + seed * 0.5),
                                 ("tp-fpgm", 83.0), ("tp-random", 70 + seed)):
                rows.append({"kind": "cell", "setup": cfg.setup_id(), "config": cfg.name, "arch": "vgg",
                             "seed": seed, "method": method, "mode": "local", "target": 2.0, "regime": regime,
                             "top1": top1, "base_top1": 93.0, "macs_ratio": 0.49, "params_ratio": 0.5,
                             "code": "old" if method == "tp-fpgm" and seed == 0 else "now", "commit": "abc",
                             "device": "cpu", "versions": {"torch": "x"}, "seconds": 1.0})
    return rows


def test_report_from_rows_states_only_what_the_intervals_say(tmp_path):
    cfg = replace(quality.FULL, archs=("vgg",), modes=("local",), targets=(2.0,), regimes=("none", "ft"))
    rows = _rows(cfg, ours_offset=0.0)  # gap-entropy == L2 on every seed: a tie everywhere
    page = write_report(rows, cfg, tmp_path, tmp_path / "quality.jsonl", "cmd", "now").read_text()
    assert "No entropy criterion is better than the best Torch-Pruning built-in in any of the 2 settings" in page
    assert "reference: `tp-magnitude-l2`" in page
    assert "† " in page or " †" in page  # tp-fpgm's seed-0 rows are from other code
    assert "**2 of 36 result rows come from other code**" in page.replace("\n", " ")
    assert "`information-capacity`: better in 0, tie in 0, worse in 2 of 2 settings." in page
    assert "All 3 bases reach 92 % test accuracy." in page
    if HAS_MATPLOTLIB:  # the plots need the "plot" extra
        assert (tmp_path / "quality_accuracy_local.png").stat().st_size > 0
        assert (tmp_path / "quality_differences_local.png").stat().st_size > 0
        assert "![quality_accuracy_local.png](quality_accuracy_local.png)" in page

    rows = _rows(cfg, ours_offset=1.0)  # gap-entropy +1 on every seed: the interval is [1, 1]
    page = write_report(rows, cfg, tmp_path, tmp_path / "quality.jsonl", "cmd", "now").read_text()
    assert "An entropy criterion is better than the best built-in in 2 of 4 comparisons" in page
    assert "`gap-entropy`: better in 2, tie in 0, worse in 0 of 2 settings." in page


def test_sizing_from_timing_rows_by_hand():
    cfg = replace(quality.FULL, archs=("vgg",), seeds=(0, 1), epochs=4.0, methods=("a", "b"), modes=("local",),
                  targets=(2.0,), regimes=("none", "reconstruct"))
    timing = {"kind": "timing", "arch": "vgg", "width": cfg.width, "epoch_seconds": 100.0, "eval_seconds": 10.0,
              "steps": 429, "params": 1, "macs": 1, "top1_one_epoch": 90.0, "threads": 1, "at": 0.0,
              "n_test": 10000, "cells": [{"mode": "local", "method": "a", "target": 2.0, "prune_seconds": 2.0,
                                          "regime_seconds": {"none": 3.0, "bn": 5.0}, "val_images": 2000}]}
    _, est = sizing([timing], cfg)
    # a base: 4 epochs x 100 s + 1.5 x 10 s of evaluation; a cell: 2 + 3 + 5 (reconstruct costed like bn)
    assert est["per_arch"]["vgg"] == {"base": 415.0, "cell": 10.0}
    assert est["core_s"] == 2 * 415.0 + 2 * 2 * 10.0 and est["substituted"] == ["reconstruct"]
    assert est["wall_h_2"] == pytest.approx(870.0 / 2 / 3600)
    # timed without the validation measurement: the run validates cfg.cell_val_images (1000) per regime, so
    # 2 regimes x 1000 / 10000 of the "none" seconds are added
    assert cfg.cell_val_images == 1000
    del timing["cells"][0]["val_images"]
    _, est = sizing([timing], cfg)
    assert est["per_arch"]["vgg"]["cell"] == pytest.approx(10.0 + 2 * 3.0 * 0.1) and est["unvalidated"] == ["vgg"]


# ------------------------------------------------------------------------------------------------ training loop
def test_tensor_datasets_are_batched_like_item_by_item():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(37, 2, 3, 3, generator=g), torch.arange(37))
    runtime = Runtime(torch.device("cpu"), quiet=True)
    sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(4))
    fast = [b for b in _batched(data, sampler, 8, True, runtime)]
    sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(4))
    slow = [b for b in _batched(Subset(data, range(37)), sampler, 8, True, runtime)]  # the per-item path
    assert len(fast) == len(slow) == 4
    for (xa, ya), (xb, yb) in zip(fast, slow, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_is_seeded_and_flips_change_it():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(64, 1, 6, 6, generator=g), torch.randint(0, 3, (64,), generator=g))

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    runtime = Runtime(torch.device("cpu"), quiet=True)
    a = train(net(), split, 2.0, 0.1, seed=3, batch_size=16, runtime=runtime)
    b = train(net(), split, 2.0, 0.1, seed=3, batch_size=16, runtime=runtime)
    c = train(net(), Split(split.x.flip(-1), split.y), 2.0, 0.1, seed=3, batch_size=16, runtime=runtime)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_batchnorm_re_estimation_against_numpy():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(6, 3, 4, 4, generator=g) * 2 + 1, None) for _ in range(3)]
    model = nn.Sequential(nn.BatchNorm2d(3)).eval()
    model[0].running_mean.fill_(5.0)
    recalibrate_batchnorm(model, data)
    arrays = [x.numpy() for x, _ in data]
    # a cumulative average over equal batches: the mean of the batch means and of the unbiased batch variances
    mean = np.mean([a.mean(axis=(0, 2, 3)) for a in arrays], axis=0)
    var = np.mean([a.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1, ddof=1) for a in arrays], axis=0)
    assert np.allclose(model[0].running_mean.numpy(), mean, atol=1e-5)
    assert np.allclose(model[0].running_var.numpy(), var, atol=1e-5)
    assert model[0].momentum == 0.1 and not model.training


@pytest.mark.parametrize("arch", sorted(FMNIST_MODELS))
def test_the_three_networks_run_on_native_fashion_mnist(arch):
    model = FMNIST_MODELS[arch](10).eval()
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_cuda_where_there_is_none(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert quality.main(["--quick", "--device", "cuda", "--rows", "/nonexistent/rows.jsonl"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ quick mode
@pytest.mark.skipif(not HAS_FMNIST, reason="needs dataset-fashion-mnist (installed by .ci/run)")
def test_quick_mode_end_to_end_resumes_and_reports(tmp_path):
    rows_path, cache = tmp_path / "rows.jsonl", tmp_path / "cache"
    argv = ["--quick", "--rows", str(rows_path), "--cache", str(cache), "--threads", "1"]
    assert quality.main(argv) == 0
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    cells = [r for r in rows if r["kind"] == "cell"]
    cfg = quality.QUICK
    regimes = quality.runnable_regimes(cfg.regimes)
    assert {(r["method"], r["mode"], r["target"], r["regime"]) for r in cells} == {
        (m, mo, t, rg) for m in cfg.methods for mo in cfg.modes for t in cfg.targets for rg in regimes}
    assert len(cells) == len(cfg.methods) * len(cfg.modes) * len(cfg.targets) * len(regimes)
    needed = {"arch", "seed", "method", "mode", "target", "regime", "top1", "base_top1", "macs_ratio",
              "params_ratio", "versions", "commit", "device", "seconds", "code"}
    ok = [r for r in cells if r["top1"] is not None]
    assert len(ok) >= len(cells) // 2 and all(needed <= set(r) and 0 <= r["top1"] <= 100 for r in ok)
    assert all(r["n_test"] == 500 and r["n_val"] == 256 and r["device"] == "cpu" for r in cells)
    for target in cfg.targets:  # local: one ratio for every method, so the same widths and MACs
        local = {round(r["macs_ratio"], 9) for r in ok if r["mode"] == "local" and r["target"] == target}
        assert len(local) == 1 and local.pop() <= 1 / target
    assert all(r["speed_up"] >= r["target"] for r in ok if r["mode"] == "global")
    page = (tmp_path / "quality.md").read_text()
    assert "## Which criterion should I use?" in page and "no paired difference has an interval" in page
    # resume: a row lost (and a line cut short by a kill) is run again, nothing else
    lines = rows_path.read_text().splitlines()
    lost = next(i for i, line in enumerate(lines) if '"method": "tp-magnitude-l2"' in line and '"local"' in line)
    kept = lines[:lost] + lines[lost + 1:]
    rows_path.write_text("\n".join(kept) + "\n" + lines[lost][:40] + "\n")
    assert quality.main(argv + ["--methods", "tp-magnitude-l2", "--modes", "local", "--jobs", "1"]) == 0
    again = [json.loads(line) for line in rows_path.read_text().splitlines()[len(kept) + 1:]]
    new_cells = [r for r in again if r["kind"] == "cell"]
    assert len(new_cells) == 1 and json.loads(lines[lost])["regime"] == new_cells[0]["regime"]
    assert new_cells[0]["top1"] == pytest.approx(json.loads(lines[lost])["top1"])  # the same prune, the same number
    # the pipelines part on the same base and rows: a pipeline with and without the budget, paired with the cells
    from benchmarks import quality_pipelines

    assert quality_pipelines.main(["--quick", "--rows", str(rows_path), "--cache", str(cache), "--threads", "1",
                                   "--pipelines", "luo-wu", "--variants", "paper+reconstruct", "reconstruct"]) == 0
    runs = [json.loads(line) for line in rows_path.read_text().splitlines() if '"kind": "pipeline"' in line]
    assert {(r["target"], r["variant"]) for r in runs} == {(t, v) for t in cfg.targets
                                                           for v in ("paper+reconstruct", "reconstruct")}
    assert all(r["top1"] is not None and r["speed_up"] >= 0.95 * r["target"] and r["method"] == "pipeline:luo-wu"
               for r in runs)
    # the whole short fine-tune budget spent, each image once; none without the budget
    assert {r["variant"]: r["finetune_images"] for r in runs} == {"paper+reconstruct": cfg.finetune_images,
                                                                  "reconstruct": 0}
    page = (tmp_path / "quality.md").read_text()
    section = page[page.index("## The papers' procedures"):page.index("## Which criterion")]
    assert "pipeline:luo-wu | reconstruct |" in section and "(1 seed)" in section  # paired with the cells
    # the calibration-size sweep on the same base: nested image sets, one row per method and size
    from benchmarks import quality_calibration

    assert quality_calibration.main(["--quick", "--rows", str(rows_path), "--cache", str(cache), "--threads", "1",
                                     "--sizes", "64", "128", "--methods", "reconstruct", "bn"]) == 0
    sweep = [json.loads(line) for line in rows_path.read_text().splitlines() if '"kind": "calibration"' in line]
    assert sorted((r["target"], r["method"], r["images"]) for r in sweep) == sorted(
        (t, m, n) for t in cfg.targets for m in ("reconstruct", "bn") for n in (64, 128))
    local_l2 = {r["target"]: r["macs_ratio"] for r in cells
                if r["method"] == "tp-magnitude-l2" and r["mode"] == "local"}
    assert all(r["macs_ratio"] == pytest.approx(local_l2[r["target"]]) for r in sweep)  # the cell's pruned network
    assert "## How much calibration data the recovery step needs" in (tmp_path / "quality.md").read_text()


def test_recovery_section_computes_the_paired_differences_of_a_planted_case():
    """Two seeds, hand-computed: reconstruct − bn = (2, 2); reconstruct+ft − ft = (3, 2.7): mean 2.85, half-width
    t(0.975, 1) x 0.2121 / sqrt(2) = 1.906; base − reconstruct = (1, 1): within 1 pp."""
    from benchmarks.quality_recovery_report import recovery_section
    from benchmarks.quality_stats import Cell

    values = {"none": [10, 12], "bn": [80, 81], "reconstruct": [82, 83], "ft": [85, 85.5], "reconstruct+ft": [88, 88.2]}
    table = {("vgg", "local", 2.0, r): {"tp-magnitude-l2": Cell("vgg", "local", 2.0, r, "tp-magnitude-l2",
                                                                 dict(enumerate(v)), 0.5, 0.5, False)}
             for r, v in values.items()}
    lines = recovery_section(table, {("vgg", 0): 83.0, ("vgg", 1): 84.0})
    row = next(line for line in lines if line.startswith("| vgg | local | 2x"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[3] == "83.50 ± 0.71" and cols[6] == "82.50 ± 0.71"
    assert cols[9:11] == ["+1.00 [+1.00, +1.00]", "yes"]
    assert cols[11] == "+2.00 [+2.00, +2.00] better" and cols[13] == "+2.85 [+0.94, +4.76] better"
    assert cols[12] == "-2.75 [-5.93, +0.43] tie"
    assert any("better in 1, tie in 0, worse in 0 of 1" in line and "+2.85" in line for line in lines)


def test_advice_puts_better_verdicts_in_scale_of_chance():
    """A 95 % two-sided interval lies above zero 2.5 % of the time where nothing differs: 0.025 x 300 = 7.5."""
    from benchmarks.quality_report import _chance_line

    line = _chance_line(300, 1)
    assert "about 7.5 of these 300" in line and "1 did, fewer than that" in line
    assert "8 did, about that" in _chance_line(300, 8) and "20 did, more than that" in _chance_line(300, 20)


def test_bottom_line_of_a_planted_table():
    """Two settings, hand-computed: reconstruct − none over methods = ((90+91+80) − (10+20+30)) / 3 = 67 and
    ((88+86+84) − (10+10+10)) / 3 = 76, mean 71.5; spread after it (91 − 80, 88 − 84) = 7.5; best built-in − best
    entropy criterion = (91 − 90, 88 − 86) = +1.5."""
    from benchmarks.quality_report import _bottom_line

    values = {("vgg", "local", 2.0): {"none": (10, 20, 30), "reconstruct": (90, 91, 80)},
              ("vgg", "local", 3.0): {"none": (10, 10, 10), "reconstruct": (86, 88, 84)}}
    methods = ("gap-entropy", "tp-magnitude-l2", "tp-random")
    table = {(*k, r): {m: Cell(k[0], k[1], k[2], r, m, {0: v, 1: v}, 0.5, 0.5, False)
                       for m, v in zip(methods, vs, strict=True)}
             for k, by_regime in values.items() for r, vs in by_regime.items()}
    lines = _bottom_line(table, {"gap-entropy"}, [], 10)
    assert "adds +71.5 pp" in lines[0] and "span 7.5 pp" in lines[0] and "by +1.50 pp" in lines[0]
    assert "Torch-Pruning built-in" in lines[1] and "told apart from chance" in lines[1]


def test_recovery_between_stages_is_paired_by_seed():
    """paper+reconstruct − paper per seed = (5, 4, 6): mean 5, sd 1, half-width t(0.975, 2) / sqrt(3) = 2.484."""
    from benchmarks.quality_pipelines_report import _recovery_sentences

    def rows(values):
        return {s: {"top1": v} for s, v in enumerate(values)}

    runs = {("resnet20", 3.0, "pipeline:luo-wu", "paper"): rows((80, 82, 81)),
            ("resnet20", 3.0, "pipeline:luo-wu", "paper+reconstruct"): rows((85, 86, 87)),
            ("resnet20", 3.0, "pipeline:efp", "paper"): rows((88, 88, 88))}  # no recovered twin: not compared
    (line, blank) = _recovery_sentences(runs)
    assert "better in 1, tie in 0, worse in 0 of 1" in line and "+5.00 pp (resnet20 3x pipeline:luo-wu)" in line
    assert blank == "" and _recovery_sentences({}) == []
    iv = paired_interval([85, 86, 87], [80, 82, 81])
    assert iv.low == pytest.approx(5 - 4.302653 / math.sqrt(3), abs=1e-5)


def test_declared_result_equivalent_code_is_not_marked_and_is_quoted(tmp_path):
    from benchmarks.quality_report import equivalent_codes

    chain = [{"code": "old", "same_results_as": "mid", "changed": ["a.py"], "why": "a comment."},
             {"code": "mid", "same_results_as": "now", "changed": ["b.py"], "why": "a rename."},
             {"code": "elsewhere", "same_results_as": "other", "changed": [], "why": "unrelated."}]
    assert set(equivalent_codes("now", chain)) == {"old", "mid"}  # transitive, and only towards "now"
    assert equivalent_codes("mid", chain) == {"old": chain[0]}
    cfg = replace(quality.FULL, archs=("vgg",), modes=("local",), targets=(2.0,), regimes=("none", "ft"))
    page = write_report(_rows(cfg, 0.0), cfg, tmp_path, tmp_path / "quality.jsonl", "cmd", "now",
                        declarations=chain).read_text()
    assert "come from other code" not in page and "†" not in page
    assert "2 result rows of code `old` count as the current code's (`now`)" in page and "`a.py` changed" in page
    page = write_report(_rows(cfg, 0.0), cfg, tmp_path, tmp_path / "quality.jsonl", "cmd", "now",
                        declarations=chain[1:]).read_text()
    assert "**2 of 36 result rows come from other code**" in page.replace("\n", " ") and "†" in page
