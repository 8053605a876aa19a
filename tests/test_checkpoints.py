"""The one checkpoint loader (``entropy_importance.checkpoints``, used by the CLI and the recipes) and the one
first-line helper of error messages."""

import os

import pytest
import torch
import torch.nn as nn

from entropy_importance.checkpoints import CheckpointError, load_checkpoint, read_state_dict
from entropy_importance.messages import first_line


def _net(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width))


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"model": s, "epoch": 3}, lambda s: {"state_dict": s},
                                  lambda s: {f"module.{k}": v for k, v in s.items()}],
                         ids=["plain", "model", "state_dict", "ddp"])
def test_every_layout_of_a_state_dict_loads_the_same_tensors(tmp_path, wrap):
    torch.manual_seed(0)
    source = _net()
    torch.save(wrap(source.state_dict()), tmp_path / "c.pt")
    target = _net()
    assert load_checkpoint(target, tmp_path / "c.pt", "net") is target
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bad_checkpoints_are_one_line_naming_the_file(tmp_path):
    noise, listing, other = tmp_path / "noise.pt", tmp_path / "list.pt", tmp_path / "other.pt"
    noise.write_bytes(os.urandom(1024))
    torch.save([1, 2, 3], listing)
    torch.save(_net(8).state_dict(), other)
    cases = [(tmp_path / "absent.pt", "does not exist"), (noise, "cannot be read"), (listing, "is not a state dict"),
             (other, "is not a net with 4 channels: 0 missing, 0 unexpected, 6 mis-shaped tensors")]
    target = _net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for path, words in cases:
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(target, path, "net with 4 channels")
        assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # unchanged


def test_a_state_dict_read_first_loads_later_and_names_its_file(tmp_path):
    torch.save(_net(8).state_dict(), tmp_path / "w.pt")
    state = read_state_dict(tmp_path / "w.pt")
    load_checkpoint(_net(8), state)
    with pytest.raises(CheckpointError, match=r"checkpoint .*w\.pt is not a model of this architecture"):
        load_checkpoint(_net(4), state, path=tmp_path / "w.pt")


def test_the_recipes_raise_their_own_error_from_the_same_loader(tmp_path):
    from recipes.models import RecipeError
    from recipes.models import load_checkpoint as recipe_load

    (tmp_path / "noise.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RecipeError, match="cannot be read"):
        recipe_load(_net(), tmp_path / "noise.pt", "net")


def test_first_line():
    assert first_line(ValueError("\n  first\nsecond")) == "first"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("abcdef\nx"), limit=3) == "abc"
    assert first_line(OSError("disk full\nmore"), with_type=True) == "OSError: disk full"
