"""``entropy-prune`` end to end in a subprocess, and saved models that reload with identical outputs."""

import json
import subprocess
import sys
import time

import pytest
import timm
import torch

from entropy_importance.cli.arguments import QUICK_BUDGET_S
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


#: refusals of the arguments alone (each given after ``--out pruned.pt``)
ARGUMENT_CASES = [
    (["--criterion", "no-such-criterion"], "unknown importance 'no-such-criterion'"),
    (["--ratio", "1.5"], "--ratio must be in [0, 1)"),
    (["timm:no_such_model"], "unknown timm model"),
    (["torchvision:no_such_model"], "unknown torchvision model"),
    (["nothing-of-the-kind"], "is neither a file nor 'timm:NAME'"),
    (["timm:resnet10t", "--pretrained", "--model-arg", "drop_rate=0.1", "--checkpoint", "w.pt"], "give one"),
    (["--out", "/no/such/dir/x.pt"], "does not exist"),
    (["--criterion", "gap-entropy"], "needs calibration images: add --data fashion-mnist"),
    (["--data", "fashion-mnist"], "is data-free: --data would not be used"),
    (["--recover", "reconstruct"], "--recover reconstruct needs calibration images: add --data"),
    (["--input-size", "3", "0", "0"], "--input-size must be three positive integers"),
    (["--num-classes", "0"], "--num-classes must be a positive integer"),
    (["--speed-up", "0.5"], "--speed-up must be > 1"),
    (["--model-arg", "oops"], "expected KEY=VALUE"),
    (["--latency", "off", "--latency-runs", "5"], "--latency-runs would not be used with --latency off"),
    (["--no-latency", "--latency-batch-sizes", "1"], "--latency-batch-sizes would not be used"),
    (["--latency-batch-sizes", "1", "0"], "--latency-batch-sizes must be a positive integer"),
]


@pytest.mark.parametrize("args, message", ARGUMENT_CASES)
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


@pytest.mark.parametrize("criterion", ["tp-activation", "tp-taylor", "conditional-entropy"])
def test_cli_refreshes_every_data_dependent_criterion(tmp_path, criterion, fashion_mnist_dir):
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


def test_cli_recovers_the_pruned_model_on_the_data_and_reports_it(tmp_path, fashion_mnist_dir):
    """A data-free criterion with --data and --recover: the report carries the recovery, and the saved model
    reloads with the refitted weights (its output differs from the same prune without recovery)."""
    import torch

    import entropy_importance as ei

    outs = {}
    for recover in ("reconstruct", "none"):
        report, out = tmp_path / f"{recover}.json", tmp_path / f"{recover}.pt"
        extra = ["--data", "fashion-mnist", "--recover", recover] if recover != "none" else []
        proc = subprocess.run(
            CLI + ["timm:resnet10t", "--criterion", "tp-magnitude-l2", "--input-size", "3", "32", "32",
                   "--calibration-batches", "2", "--batch-size", "16", "--latency", "off", "--ratio", "0.3",
                   "--json", str(report), "--out", str(out), *extra],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs[recover] = (json.loads(report.read_text()), ei.load_pruned(out))
    recovery = outs["reconstruct"][0]["recovery"]
    assert recovery["method"] == "reconstruct" and recovery["refitted"] > 0 and recovery["images"] == 32
    assert recovery["error_after"] < recovery["error_before"]
    assert outs["none"][0]["recovery"] is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(outs["reconstruct"][1](x), outs["none"][1](x))


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
    lat = r["latency"]  # the default, quick: budget_s seconds in all, shared by the four figures
    assert lat["mode"] == "quick" and lat["device"] == "cpu" and lat["budget_s"] == QUICK_BUDGET_S
    assert lat["warmup"] == 1
    runs = []
    for when in ("before", "after"):
        for batch in ("1", "32"):
            t = lat["pytorch"][when][batch]
            assert 3 <= t["runs"] <= lat["max_runs"] and 0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"]
            if t["runs"] > 3:  # more than the minimum: the timed runs fit the figure's share (overrun by one run)
                assert t["runs"] * t["min_ms"] / 1000 <= t["budget_s"] + t["max_ms"] / 1000
            runs.append(t["runs"])
    assert r["timings"]["latency_s"] < lat["budget_s"] + 2.0  # about the budget (these runs are short)
    assert "latency cpu b32 (ms)" in proc.stdout
    counted = f"{min(runs)}" if min(runs) == max(runs) else f"{min(runs)}-{max(runs)}"
    assert f"median of {counted} timed runs per figure" in proc.stdout
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


@pytest.mark.parametrize("flags, mode", [(["--latency", "full", "--latency-runs", "4"], "full"),
                                         (["--latency", "quick", "--latency-runs", "2"], "quick"),
                                         (["--latency", "off"], None), (["--no-latency"], None)])
def test_cli_latency_modes_say_how_many_runs_each_figure_is_based_on(tmp_path, capsys, flags, mode):
    from entropy_importance.cli import main

    report = tmp_path / "r.json"
    argv = ["timm:resnet10t", "--input-size", "3", "32", "32", "--latency-batch-sizes", "2", "--json", str(report)]
    if mode is None:
        argv.remove("--latency-batch-sizes")
        argv.remove("2")
    assert main(argv + flags) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    lat = json.loads(report.read_text())["latency"]
    if mode is None:
        assert lat is None and "latency_s" not in json.loads(report.read_text())["timings"]
        assert "latency cpu" not in out
        return
    figures = [lat["pytorch"][when]["2"] for when in ("before", "after")]
    assert lat["mode"] == mode and set(lat["pytorch"]["before"]) == {"2"}
    if mode == "full":  # exactly --latency-runs timed runs after 5 warm-up runs
        assert lat["budget_s"] is None and lat["warmup"] == 5 and [t["runs"] for t in figures] == [4, 4]
        assert "median of 4 timed runs per figure (a fixed count) after 5 warm-up" in out
    else:  # a tiny model fills no budget: --latency-runs caps the runs
        assert lat["budget_s"] == QUICK_BUDGET_S and [t["runs"] for t in figures] == [2, 2]
    assert all(0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"] for t in figures)


class _Sleeper(torch.nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.lin = seconds, torch.nn.Linear(4, 2)

    def forward(self, x):
        time.sleep(self.seconds)
        return self.lin(x)


def test_quick_latency_shares_one_budget_among_the_figures():
    """Planted sleeps: a slow model that overruns its share with its minimum runs leaves the later figures their
    minimum; a fast one lets every figure take about its equal share."""
    from entropy_importance.cli.arguments import LatencyPlan
    from entropy_importance.cli.timing import measure

    plan = LatencyPlan("quick", (1, 2), runs=1000, warmup=1, budget_s=0.8)
    start = time.perf_counter()
    out = measure(plan, "cpu", False, {"before": _Sleeper(0.12), "after": _Sleeper(0.005)}, (4,))
    took = time.perf_counter() - start
    runs = {(w, b): t["runs"] for w, by_batch in out["pytorch"].items() for b, t in by_batch.items()}
    assert runs == {("before", "1"): 3, ("before", "2"): 3, ("after", "1"): 3, ("after", "2"): 3}
    assert took < 2 * 4 * 0.12 + 4 * 4 * 0.005 + 0.5  # the minimum runs, nothing more
    start = time.perf_counter()
    out = measure(plan, "cpu", False, {"before": _Sleeper(0.005), "after": _Sleeper(0.005)}, (4,))
    took = time.perf_counter() - start
    shares = [t["budget_s"] for by_batch in out["pytorch"].values() for t in by_batch.values()]
    assert out["pytorch"]["before"]["2"]["budget_s"] == pytest.approx(0.8 / 4)  # the largest batch first
    assert list(out["pytorch"]["before"]) == ["1", "2"] and all(0.1 < s < 0.4 for s in shares)
    assert all(t["runs"] >= 15 for by_batch in out["pytorch"].values() for t in by_batch.values())  # ~0.2 s / 5 ms
    assert 0.6 < took < 0.8 + 0.3


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
    assert 3 <= onnx["before"]["1"]["runs"] <= 20  # quick: within the budget, at most --latency-runs


def _data_and_weight_cases(tmp_path) -> list[tuple[list[str], str, set[str]]]:
    """Refusals of files and folders: (argv, the error's words, what the CLI may read or build before refusing).
    Only an image's content, a checkpoint's content and a saved model's content need reading to be refused."""
    import os

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
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(2048))
    outputs = ["--out", str(work / "o.pt"), "--json", str(work / "r.json")]
    small = ["timm:resnet10t", "--input-size", "3", "32", "32", "--no-latency", "--calibration-batches", "1",
             "--batch-size", "8", *outputs]
    cases = [
        (["--criterion", "gap-entropy", "--data", f"imagefolder:{tmp_path / 'empty'}"], "holds no images", set()),
        (["--criterion", "gap-entropy", "--data", f"imagefolder:{broken}", "--calibration-batches", "2"],
         "zz_broken.png is not a readable image", {"create_model", "image_folder", "calibration_batches"}),
        (["--criterion", "gap-entropy", "--data", f"imagefolder:{tmp_path / 'nowhere'}"], "does not exist", set()),
        (["--criterion", "conditional-entropy", "--data", f"imagefolder:{flat}"], "no class subfolders", set()),
        (["--criterion", "conditional-entropy", "--data", f"imagefolder:{one_class}"], "all of one class", set()),
        (["--criterion", "gap-entropy", "--data", "cifar10:" + str(tmp_path)], "add --download", set()),
        (["--criterion", "gap-entropy", "--data", "mnist"], "expected fashion-mnist, imagefolder:DIR", set()),
        (["--download"], "--download needs --data cifar10:DIR", set()),
        (["--criterion", "information-capacity", "--data", f"imagefolder:{one_class}"], "is data-free", set()),
        (["--criterion", "tp-taylor", "--num-classes", "1", "--data", f"imagefolder:{broken}"],
         "has 2 classes, the model's classifier 1", set()),
        (["--criterion", "tp-taylor", "--num-classes", "5", "--data", "fashion-mnist"],
         "fashion-mnist has 10 classes, the model's classifier 5", set()),
        (["--pretrained", "--checkpoint", str(noise)], "give one", set()),
        (["--checkpoint", str(noise)], f"checkpoint {noise} cannot be read", {"read_state_dict"}),
        (["--checkpoint", str(tmp_path / "absent.pt")], "no such file", set()),
        (["--onnx", "--no-latency"], "--onnx measures latency", set()),
        (["--batch-size", "0"], "--batch-size must be a positive integer", set()),
        (["--latency-runs", "0"], "--latency-runs must be a positive integer", set()),
        (["--device", "tpu"], "expected cpu, cuda or cuda:N", set()),
    ]
    cases = [(small + args, message, reads) for args, message, reads in cases]
    if not torch.cuda.is_available():
        cases.append((small + ["--device", "cuda"], "no CUDA device is available", set()))
    # MODEL a damaged saved model; and options that would build a new model given with a saved one
    cases.append(([str(noise), "--no-latency", *outputs], "noise.pt", {"load_pruned"}))
    cases.append(([str(noise), "--num-classes", "10", *outputs], "--num-classes is for a new model", set()))
    return cases


def test_cli_bad_data_and_weights_are_one_line(tmp_path, capsys):
    from entropy_importance.cli import main

    for argv, message, _ in _data_and_weight_cases(tmp_path):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, (argv, err)
    assert list((tmp_path / "work").iterdir()) == []  # nothing written


#: what the CLI reads or builds, by the names ``entropy_importance.cli.inputs`` calls them by
READERS = ("create_model", "load_pruned", "read_state_dict", "fashion_mnist", "image_folder", "cifar10",
           "calibration_batches")


def test_every_refusal_is_quick_and_comes_before_any_build_or_read(tmp_path, monkeypatch, capsys):
    """Each case of both bad-input lists is refused in well under a second, and, unless the problem is in a
    file's content, before any model is built or any file or image is read (spies on every reader)."""
    from entropy_importance.cli import inputs, main

    calls: list[str] = []
    for name in READERS:
        real = getattr(inputs, name)
        monkeypatch.setattr(inputs, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name),
                                                                                   _real(*a, **k))[1])
    monkeypatch.chdir(tmp_path)
    cases = [(["--out", "pruned.pt"] + args, message, set()) for args, message in ARGUMENT_CASES]
    cases += _data_and_weight_cases(tmp_path)
    main(["--ratio", "2"])  # imports done once, outside the timing
    for argv, message, may_read in cases:
        seconds = []
        for _ in range(2):  # the faster of two: a shared machine's hiccup is not the CLI's time
            calls.clear()
            capsys.readouterr()
            start = time.perf_counter()
            assert main(argv) == 2, argv
            seconds.append(time.perf_counter() - start)
            assert message in capsys.readouterr().err, argv
            assert set(calls) <= may_read, (argv, calls)
        limit = 0.25 if not may_read else 0.75
        assert min(seconds) < limit, (argv, seconds)
        if not may_read:
            assert calls == [], (argv, calls)
        if may_read == {"read_state_dict"}:
            assert calls == ["read_state_dict"]  # the checkpoint is read before the model is built


def test_data_free_criterion_with_data_is_refused_even_without_the_data(tmp_path, monkeypatch, capsys):
    """The combination is wrong whatever the files: it is refused as such, not for missing Fashion-MNIST."""
    import importlib

    from entropy_importance.cli import main

    module = importlib.import_module("entropy_importance.data.fashion_mnist")  # not the package's function

    monkeypatch.setattr(module, "FASHION_MNIST_DIRS", ())
    monkeypatch.delenv("FASHION_MNIST_ROOT", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert module.find_fashion_mnist() is None
    assert main(["--data", "fashion-mnist"]) == 2
    assert "is data-free" in capsys.readouterr().err
    assert main(["--criterion", "gap-entropy", "--data", "fashion-mnist"]) == 2  # needs the data: now not found
    err = capsys.readouterr().err
    assert "files not found" in err and "FASHION_MNIST_ROOT" in err and str(tmp_path / "cache") in err


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


@pytest.mark.parametrize("flags, sizes", [([], (1,)), (["--latency", "full"], (1, 32)),
                                          (["--latency-batch-sizes", "1", "32"], (1, 32)),
                                          (["--latency", "full", "--latency-batch-sizes", "8"], (8,))])
def test_default_latency_batch_sizes(flags, sizes):
    """Quick (the default) times batch 1 only, so that README command 1 answers in seconds; full adds batch 32."""
    from entropy_importance.cli.arguments import build_parser, latency_plan

    assert latency_plan(build_parser().parse_args(flags)).batch_sizes == sizes
