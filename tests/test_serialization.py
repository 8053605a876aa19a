"""save_pruned / load_pruned: any pruned model, by name or with the caller's base, damaged files, file modes."""

import os
import stat

import pytest
import torch
import torch.nn as nn
from conftest import small_net

from entropy_importance import load_pruned, prune, pruning_record, save_pruned
from entropy_importance.models import create_model
from entropy_importance.serialization import atomic_write, read_pruned


class MyNet(nn.Module):
    """A model of the caller's own: it cannot be rebuilt by name."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def saved_by_name(tmp_path_factory):
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    pruned, _ = prune(model, torch.randn(1, 3, 32, 32), "information-capacity", ratio=0.5)
    path = tmp_path_factory.mktemp("saved") / "resnet18.pt"
    save_pruned(path, pruned)
    return path, pruned


def test_a_model_built_by_name_reloads_with_identical_outputs(saved_by_name):
    path, pruned = saved_by_name
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_pruned(path)(x), pruned(x))
    payload = torch.load(path, weights_only=True)  # plain data: no pickled code
    assert payload["base"]["spec"] == "torchvision:resnet18" and len(payload["history"]) == 1


def test_a_pruned_model_pruned_again_and_reloaded(tmp_path, saved_by_name):
    path, pruned = saved_by_name
    again, _ = prune(load_pruned(path), torch.randn(1, 3, 32, 32), "information-capacity", ratio=0.3)
    assert len(pruning_record(again).history) == 2  # one segment per dependency graph
    save_pruned(tmp_path / "twice.pt", again)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_pruned(tmp_path / "twice.pt")(x), again(x))


def test_a_model_of_your_own_needs_its_base(tmp_path):
    pruned, _ = prune(MyNet().eval(), torch.randn(1, 3, 8, 8), "information-capacity", ratio=0.5)
    path = tmp_path / "mine.pt"
    save_pruned(path, pruned)
    with pytest.raises(ValueError, match=r"pass load_pruned\(path, base_model="):
        load_pruned(path)
    base = MyNet()
    reloaded = load_pruned(path, base_model=base)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(reloaded.eval()(x), pruned(x)) and base.body[0].out_channels == 16  # base not modified
    with pytest.raises(ValueError, match="does not match the one that was pruned"):
        load_pruned(path, base_model=small_net())


def test_saving_an_unpruned_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="carries no pruning record"):
        save_pruned(tmp_path / "x.pt", small_net())
    assert list(tmp_path.iterdir()) == []


def _tampered(tmp_path, saved, change):
    payload = torch.load(saved, weights_only=True)
    change(payload)
    path = tmp_path / "tampered.pt"
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("history"), "missing 'history'"),
    (lambda p: p.update(format="something else"), "not a pruned model saved by entropy-importance"),
    (lambda p: p.update(version=99), "format version 99"),
    (lambda p: p["history"][0].__setitem__(0, ["no.such.layer", True, [0]]), "'no.such.layer'"),
    (lambda p: p["history"][0].__setitem__(0, [p["history"][0][0][0], True, [10_000]]),
     "prunes channel 10000 of layer"),
    (lambda p: p["base"].update(spec="timm:no_such_model_xyz"), "cannot rebuild the base model"),
    (lambda p: p["state_dict"].pop("fc.weight"), "weights do not fit"),
    (lambda p: p.update(inputs={"shape": "abc"}), "not a description of example inputs"),
])
def test_a_tampered_file_is_one_clear_error(tmp_path, saved_by_name, change, message):
    path = _tampered(tmp_path, saved_by_name[0], change)
    with pytest.raises(ValueError, match=message):
        load_pruned(path)


def test_truncated_and_random_files_are_one_clear_error(tmp_path, saved_by_name):
    data = saved_by_name[0].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(os.urandom(4096))
    for name in ("cut.pt", "noise.pt"):
        with pytest.raises(ValueError, match="cannot read a pruned model"):
            read_pruned(tmp_path / name)


def test_written_files_get_the_umask_or_keep_their_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.bin", lambda f: f.write(b"x"))
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o644  # 0666 less the umask, as open() gives
        existing = tmp_path / "existing.bin"
        existing.write_bytes(b"old")
        existing.chmod(0o640)
        atomic_write(existing, lambda f: f.write(b"new"))
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640 and existing.read_bytes() == b"new"
        os.umask(0o077)
        atomic_write(tmp_path / "private.bin", lambda f: f.write(b"x"))
        assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)
