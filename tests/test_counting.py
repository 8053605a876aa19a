"""MACs counted on the engine's own models: the numbers are Torch-Pruning's (``tp.utils.count_ops_and_params``, the
oracle), the model carries nothing afterwards, and ``prune()`` copies the model twice and runs it three times."""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from conftest import image_batches, same_state, small_net, state_of

from entropy_importance import prune
from entropy_importance.engine import measured_forward, tp_macs


def _tp_count(model, inputs) -> int:
    return int(tp.utils.count_ops_and_params(model, inputs)[0])


def _leftovers(model: nn.Module) -> dict:
    """Every module's attribute names and hook counts, and its training flag: what counting must leave as it was."""
    return {name: (sorted(vars(m)), m.training, len(m._forward_hooks), len(m._forward_pre_hooks),
                   len(m._forward_hooks_with_kwargs), len(m._forward_hooks_always_called))
            for name, m in model.named_modules()}


class TwoInputs(nn.Module):
    """A model called with two positional inputs (as a tuple) or keyword arguments (as a dict)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.bn, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, image, mask):
        return self.fc(torch.relu(self.bn(self.a(image) + self.b(mask))).mean((2, 3)))


def _timm(name: str, size: int = 64):
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, img_size=size) if "vit" in name else \
        timm.create_model(name, num_classes=10), torch.randn(1, 3, size, size)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050", "vit_tiny_patch16_224", "densenet121"])
def test_macs_counted_in_place_are_torch_prunings_and_leave_nothing(name):
    model, x = _timm(name)
    model.eval()
    before, state = _leftovers(model), state_of(model)
    found = measured_forward(model, x)
    assert found.macs == _tp_count(model, x) > 0  # the oracle: Torch-Pruning's own counter on its deep copy
    assert _leftovers(model) == before and same_state(model, state)
    with torch.no_grad():
        assert torch.equal(found.output, model(x))


def test_macs_of_a_pruned_model_and_of_tuple_and_dict_inputs_are_torch_prunings():
    model, x = _timm("resnet18")
    pruned, report = prune(model, x, "tp-magnitude-l2", ratio=0.6)
    assert report.macs_before == _tp_count(model, x) and report.macs_after == _tp_count(pruned, x)
    two = TwoInputs().eval()
    inputs = (torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8))
    assert measured_forward(two, inputs).macs == _tp_count(two, inputs) > 0
    named = {"image": inputs[0], "mask": inputs[1]}
    assert measured_forward(two, named).macs == _tp_count(two, named) > 0


def test_a_model_in_training_mode_is_counted_in_eval_mode_and_left_in_training_mode():
    model, x = small_net().train(), torch.randn(4, 3, 8, 8)
    model[1].eval()  # mixed modes: each module's own flag comes back
    before, state = _leftovers(model), state_of(model)
    found = measured_forward(model, x)
    assert found.macs == _tp_count(model, x)
    assert _leftovers(model) == before  # training flags included
    assert same_state(model, state)  # eval mode while counting: BatchNorm's running statistics did not move


class KeywordPooling(nn.Module):
    """Pooling called with a keyword argument: Torch-Pruning's hook reads the empty positional inputs and fails."""

    def __init__(self):
        super().__init__()
        self.body = small_net()

    def forward(self, x):
        for i, layer in enumerate(self.body):
            x = layer(input=x) if i == 5 else layer(x)
        return x


def test_uncountable_macs_with_a_speed_up_target_is_a_clear_error():
    model, x = KeywordPooling().eval(), torch.randn(1, 3, 8, 8)
    assert tp_macs(model, x) is None  # the oracle: Torch-Pruning's own counter fails on it
    with pytest.raises(RuntimeError, match="speed_up needs MAC counts"):
        prune(model, x, "information-capacity", speed_up=2.0)
    pruned, report = prune(model, x, "information-capacity", ratio=0.5)  # a ratio needs no MACs
    assert report.macs_before is None and report.speed_up is None and pruned.body[0].out_channels == 4


def test_a_counter_that_fails_gives_no_macs_leaves_nothing_and_the_models_own_error_is_raised():
    model, x = KeywordPooling().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(IndexError):
        tp.utils.count_ops_and_params(model, x)  # the oracle: Torch-Pruning's counter fails on it
    before = _leftovers(model)
    found = measured_forward(model, x)
    assert found.macs is None and found.output.shape == (1, 5) and _leftovers(model) == before
    with pytest.raises(RuntimeError, match="channels"):  # the model's own failure is not taken for the counter's
        measured_forward(model, torch.randn(1, 1, 8, 8))
    assert _leftovers(model) == before


class CountedCopies(nn.Module):
    """A module that counts how often it is deep-copied (the model carrying it is copied as often)."""

    copies = 0

    def __deepcopy__(self, memo):
        CountedCopies.copies += 1
        clone = CountedCopies()
        memo[id(self)] = clone
        return clone


class CopyCountedNet(nn.Module):
    """small_net carrying a :class:`CountedCopies` (which its forward does not use); the count starts at 0."""

    def __init__(self):
        super().__init__()
        self.body, self.copy_counter = small_net(), CountedCopies()
        CountedCopies.copies = 0

    def forward(self, x):
        return self.body(x)


def test_prune_at_a_ratio_copies_the_model_twice():
    model = CopyCountedNet().eval()
    pruned, report = prune(model, torch.randn(1, 3, 8, 8), "tp-magnitude-l2", ratio=0.5)
    # by hand: the engine's base (so that the caller's model is never touched) and the copy that is pruned; the MAC
    # counts before and after are made on those two, not on copies of their own (Torch-Pruning's counter copies)
    assert CountedCopies.copies == 2
    assert report.macs_before == _tp_count(model, torch.randn(1, 3, 8, 8)) and pruned.body[0].out_channels == 4
    model = CopyCountedNet().eval()
    data = image_batches(2, 4, size=8, classes=5)
    prune(model, torch.randn(1, 3, 8, 8), "gap-entropy", ratio=0.5, calibration_data=data)
    assert CountedCopies.copies == 2  # a data-driven criterion is calibrated on the base: no copy of its own


def test_a_speed_up_search_copies_the_model_once_per_probe():
    from entropy_importance.engine import Engine

    model = CopyCountedNet().eval()
    engine = Engine(model, torch.randn(1, 3, 8, 8), "tp-magnitude-l2")
    probes = []
    one_shot = engine.one_shot
    engine.one_shot = lambda r, *a: probes.append(r) or one_shot(r, *a)
    ratio, work, _ = engine.search_ratio(1.5)
    assert CountedCopies.copies == 1 + len(probes) and ratio in probes
    assert engine.measured(work)[0] == _tp_count(work, torch.randn(1, 3, 8, 8))
