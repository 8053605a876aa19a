"""Recipes: the structure of every recipe against its paper, the CLI's errors, the datasets on folders written here,
the training engine (schedules, resume, DistributedDataParallel on 2 CPU processes) against oracles, one smoke run."""

import json
import math
import os
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from entropy_importance.data import find_fashion_mnist
from recipes.__main__ import main
from recipes.configs import RECIPES, get_recipe
from recipes.data import load_data
from recipes.models import RecipeError, build_model
from recipes.recipe import Schedule
from recipes.runner import load_result, structure
from recipes.trainer import Runtime, evaluate, fit, learning_rate

HAS_FMNIST = find_fashion_mnist() is not None


# ------------------------------------------------------------------------------------------------ structure
@pytest.mark.parametrize("name", list(RECIPES))
def test_structure_only_meets_the_paper_within_one_point(name):
    recipe = RECIPES[name]
    result = structure(recipe)
    for key, claimed in (("params", recipe.claim.params), ("macs", recipe.claim.macs)):
        if claimed is not None:  # the paper's numbers, typed in from the papers: an independent oracle
            ours = 100 * (1 - result[f"{key}_after"] / result[f"{key}_before"])
            assert abs(ours - claimed) <= 1.0, (key, ours, claimed)
    assert result["matches_paper"]


def test_luo_vgg16_parameters_by_hand():
    """VGG-16 with conv1_1-conv4_3 halved, conv5_x whole, GAP + Linear(512, 1000): parameters counted by hand."""
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    kept = [w // 2 for w in widths[:10]] + widths[10:]
    params, c_in = 0, 3
    for c in kept:
        params += c_in * c * 9 + c
        c_in = c
    params += 512 * 1000 + 1000
    original = 138_357_544  # torchvision's vgg16
    result = structure(RECIPES["luo-vgg16-imagenet"])
    assert result["params_before"] == original and result["params_after"] == params
    assert abs(original / params - 16.64) < 0.05  # the paper's 16.64x compression


# ------------------------------------------------------------------------------------------------ command line
def test_list_names_every_recipe(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)


def _fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_unknown_recipe_names_the_known_ones(capsys):
    _fails(capsys, ["run", "no-such-recipe", "--structure-only"], "known: luo-vgg16-imagenet")


def test_missing_data_is_one_line_and_nothing_is_written(capsys, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, ["run", "fec-vgg16-cifar10", "--data-dir", str(tmp_path / "nothing"), "--out", str(out)],
           "--download")
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    (tmp_path / "imagenet" / "val").mkdir()
    _fails(capsys, ["run", "fec-resnet34-imagenet", "--data-dir", str(tmp_path / "imagenet"), "--out", str(out)],
           "holds no class subfolder with images")
    _fails(capsys, ["run", "fec-resnet34-imagenet", "--out", str(out)], "give --data-dir")
    assert not out.exists()


def test_checkpoint_of_another_architecture(capsys, tmp_path):
    path = tmp_path / "resnet110.pt"
    torch.save({"model": build_model("cifar-resnet110", 10).state_dict()}, path)
    _fails(capsys, ["run", "fec-vgg16-cifar10", "--structure-only", "--checkpoint", str(path)],
           "is not a cifar-vgg16 with 10 classes")
    path.write_bytes(b"not a checkpoint")
    _fails(capsys, ["run", "fec-vgg16-cifar10", "--structure-only", "--checkpoint", str(path)], "cannot be read")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none(capsys, tmp_path):
    _fails(capsys, ["run", "fec-vgg16-cifar10", "--device", "cuda", "--out", str(tmp_path / "o")], "no CUDA device")
    assert not (tmp_path / "o").exists()


def test_structure_only_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["run", "tang-resnet110-cifar10", "--structure-only", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert {"params_before", "params_after", "macs_before", "macs_after"} <= set(result)
    assert "tang-resnet110-cifar10" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ datasets
def test_cifar10_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 10)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(10)) * (n // 10)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # the files are ours, not CIFAR-10's: torchvision's checksum would reject them
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    data = load_data("cifar10", 32, data_dir=tmp_path, val_images=30, calibration_images=16)
    assert (len(data.train), len(data.val), len(data.test), len(data.calibration)) == (70, 30, 10, 16)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert not set(data.train.indices) & set(data.val.indices)  # the validation split is held out
    (folder / "test_batch").write_bytes(b"damaged")
    with pytest.raises(RecipeError, match="incomplete or damaged"):
        load_data("cifar10", 32, data_dir=tmp_path, val_images=30)


def test_imagenet_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("n01", "n02", "n03"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    data = load_data("imagenet", 64, data_dir=tmp_path, val_images=3, calibration_images=4)
    assert data.num_classes == 3 and (len(data.train), len(data.val), len(data.test)) == (15, 3, 6)
    assert data.test[0][0].shape == (3, 64, 64) and data.train[0][0].shape == (3, 64, 64)


# ------------------------------------------------------------------------------------------------ training engine
def test_learning_rate_schedules():
    cosine = Schedule(epochs=10, lr=1.0)
    assert learning_rate(cosine, 0.0, 0) == 1.0 and abs(learning_rate(cosine, 0.5, 5) - 0.5) < 1e-12
    assert abs(learning_rate(cosine, 1.0, 10)) < 1e-12
    step = Schedule(epochs=10, lr=1.0, decay="step", milestones=(4, 8))
    assert [learning_rate(step, e / 10, e) for e in (0, 3.9, 4, 7.99, 8, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])


class _Net(nn.Module):
    """No BatchNorm: a DDP step then equals one step on the union of the processes' batches."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


def _toy_data(n=48):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


class _FailsAtEpoch(Dataset):
    def __init__(self, data, batches_before_failure):
        self.data, self.left = data, batches_before_failure

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt("interrupted")
        return self.data[i]


def test_resume_continues_to_the_same_weights(tmp_path):
    schedule = Schedule(epochs=3, lr=0.1, batch_size=8)
    runtime = Runtime(torch.device("cpu"), quiet=True)
    reference = fit(_Net(), _toy_data(), schedule, runtime, seed=3)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):  # interrupted in the second epoch (48 images an epoch)
        fit(_Net(), _FailsAtEpoch(_toy_data(), 48 + 20), schedule, runtime, seed=3, checkpoint=ckpt, tag="t")
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = fit(_Net(), _toy_data(), schedule, runtime, seed=3, checkpoint=ckpt, tag="t", resume=True)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    other_tag = fit(_Net(), _toy_data(), Schedule(epochs=1, lr=0.1, batch_size=8), runtime, seed=3,
                    checkpoint=ckpt, tag="another stage", resume=True)  # a checkpoint of another stage is not used
    assert not torch.equal(other_tag.fc.weight, resumed.fc.weight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    runtime = Runtime.create("cpu", quiet=True)
    model = fit(_Net(), _toy_data(), Schedule(epochs=2, lr=0.1, batch_size=4, weight_decay=1e-3), runtime, seed=5)
    accuracy = evaluate(model, _toy_data(21), runtime, batch_size=4)
    torch.save({"state": model.state_dict(), "accuracy": accuracy, "world": runtime.world}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_distributed_data_parallel_on_two_cpu_processes_equals_the_union_batch(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(_free_port(), out), nprocs=2, join=True)
    results = [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]
    assert results[0]["world"] == 2
    for a, b in zip(results[0]["state"].values(), results[1]["state"].values(), strict=True):
        assert torch.equal(a, b)  # DDP keeps the processes equal
    # oracle: plain SGD on one process, each step on the union of what the two processes saw (DistributedSampler)
    data, model = _toy_data(), _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    total = 2 * (24 // 4)
    step = 0
    for epoch in range(2):
        order = torch.randperm(48, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
        shards = [order[r::2] for r in (0, 1)]
        for k in range(6):
            idx = shards[0][4 * k:4 * k + 4] + shards[1][4 * k:4 * k + 4]
            for group in opt.param_groups:
                group["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * step / total))
            x, y = data.tensors[0][idx], data.tensors[1][idx]
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            step += 1
    for a, b in zip(model.state_dict().values(), results[0]["state"].values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # evaluation over both shards: every one of the 21 images counted once
    x, y = _toy_data(21).tensors
    with torch.no_grad():
        expected = 100.0 * (model.eval()(x).argmax(1) == y).float().mean().item()
    assert results[0]["accuracy"] == results[1]["accuracy"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ smoke run
@pytest.mark.skipif(not HAS_FMNIST, reason="needs dataset-fashion-mnist (installed by .ci/run)")
def test_smoke_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "fec-vgg16-cifar10", "--smoke", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["accuracy_after"] > 20.0  # chance is 10 %: the pruned, fine-tuned network has learned
    assert abs(result["params_reduction"] - get_recipe("fec-vgg16-cifar10").claim.params) <= 1.0
    pruned = load_result(out / "pruned.pt")  # the recipe's architecture rebuilt, the pruning replayed
    assert sum(p.numel() for p in pruned.parameters()) == result["params_after"]
    assert "| top-1 |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FMNIST, reason="needs dataset-fashion-mnist")
@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if n != "fec-vgg16-cifar10" and r.task != "detection"])
def test_smoke_run_every_recipe(name, tmp_path):
    assert main(["run", name, "--smoke", "--out", str(tmp_path), "--quiet"]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["accuracy_after"] > 20.0


def test_recipes_are_consistent():
    for recipe in RECIPES.values():
        build_model(recipe.model, recipe.num_classes)  # every model builds
        assert recipe.reading and (recipe.claim.params is not None or recipe.claim.macs is not None)
    with pytest.raises(RecipeError, match="no pretrained weights"):
        build_model("cifar-vgg16", 10, pretrained=True)
