"""``entropy_importance.prune()``: automatic configuration, isolation of breaking groups, speed-up targets."""

import copy

import pytest
import torch
import torch.nn as nn

from entropy_importance import PruneReport, create_importance, prune
from entropy_importance.cifar import resnet56


class FixedWidthReshape(nn.Module):
    """A block whose forward hard-codes its input width (as some timm blocks do): pruning ``conv_b`` breaks it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv_a = nn.Conv2d(3, 16, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1)
        self.conv_c = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.conv_b(x))
        x = x.view(x.shape[0], 16, -1).view(x.shape[0], 16, 8, 8)  # fixed 16 channels
        return self.fc(torch.relu(self.conv_c(x)).mean((2, 3)))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return model.state_dict().keys() == state.keys() and all(
        torch.equal(v, state[k]) for k, v in model.state_dict().items()
    )


def test_breaking_group_is_kept_and_the_rest_pruned():
    model = FixedWidthReshape().eval()
    before = _state(model)
    x = torch.randn(2, 3, 8, 8)
    pruned, report = prune(model, x, "channel-similarity-entropy", ratio=0.5)
    assert _same(model, before)  # the caller's model is untouched
    assert pruned.conv_b.out_channels == 16
    assert "conv_b" in report.kept_unpruned and "forward" in report.kept_unpruned["conv_b"]
    assert report.kept_unpruned["fc"] == "classifier"
    assert pruned.conv_a.out_channels == 8 and pruned.conv_c.out_channels == 16
    assert pruned(x).shape == (2, 5)
    assert report.params_after < report.params_before and report.rounds == 2


def test_speed_up_target_is_reached_progressively():
    model = resnet56(10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune(model, x, "information-capacity", speed_up=2.0, global_pruning=True, max_steps=100)
    assert isinstance(report, PruneReport)
    assert 2.0 <= report.speed_up < 2.3
    assert report.steps > 1
    assert pruned(x).shape == (1, 10)
    assert model.conv1.out_channels == 16  # caller's model untouched


def test_data_driven_criterion_is_calibrated_on_the_model_being_pruned():
    model = resnet56(10).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    imp = create_importance("conditional-entropy")
    pruned, report = prune(model, torch.randn(1, 3, 32, 32), imp, speed_up=1.5, calibration_data=data, max_steps=60)
    assert report.speed_up >= 1.5
    assert imp.calibrated


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"ratio": 1.0}, ValueError),
        ({"speed_up": 0.5}, ValueError),
        ({"importance": "gap-entropy"}, ValueError),  # needs calibration_data
        ({"pruning_ratio": 0.3}, TypeError),
        ({"importance": "no-such-criterion"}, KeyError),
    ],
)
def test_bad_arguments_leave_the_model_unchanged(kwargs, error):
    model = FixedWidthReshape().eval()
    before = _state(model)
    kwargs = {"importance": "channel-similarity-entropy", **kwargs}
    with pytest.raises(error):
        prune(model, torch.randn(1, 3, 8, 8), **kwargs)
    assert _same(model, before)


def test_a_failing_calibration_leaves_the_model_unchanged():
    model = FixedWidthReshape().eval()
    reference = copy.deepcopy(model)
    with pytest.raises(ValueError, match="labels"):
        prune(model, torch.randn(1, 3, 8, 8), "conditional-entropy", calibration_data=[torch.randn(4, 3, 8, 8)])
    assert _same(model, reference.state_dict())


def test_prune_with_taylor_and_no_data_is_an_argument_error():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs data: pass calibration_data"):
        prune(model, torch.randn(1, 3, 32, 32), "tp-taylor", ratio=0.3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
