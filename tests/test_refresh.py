"""Refreshing data-dependent criteria before each step: Taylor gradients, activation statistics, label alignment."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import image_batches, small_net

from entropy_importance import ConditionalEntropyImportance, EntropyPruner, create_importance
from entropy_importance.calibration import refresh_importance


def batches(n=3, b=6, seed=0):
    return image_batches(n, b, size=8, classes=5, seed=seed)


def test_taylor_refresh_leaves_the_summed_loss_gradient_and_keeps_batchnorm_statistics():
    model, data = small_net().train(), batches()
    running = model[1].running_mean.clone()
    refresh_importance(create_importance("tp-taylor"), model, data)
    # independent oracle: autograd of the summed per-batch mean losses, on a copy in eval mode
    oracle = small_net().eval()
    loss = sum(F.cross_entropy(oracle(x), y) for x, y in data)
    expected = torch.autograd.grad(loss, list(oracle.parameters()))
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert model.training and torch.equal(model[1].running_mean, running)


def test_activation_refresh_averages_over_all_calibration_images():
    model, data = small_net(), batches()
    imp = create_importance("tp-activation")
    refresh_importance(imp, model, data)
    x = np.concatenate([x.numpy() for x, _ in data])
    np.testing.assert_allclose(model[0]._importance.numpy(), np.abs(x).mean((0, 2, 3)), rtol=1e-5)


def test_data_free_criteria_need_no_refresh():
    assert refresh_importance(create_importance("tp-magnitude-l2"), small_net(), None) is False


@pytest.mark.parametrize("name", ["tp-taylor", "tp-activation"])
def test_entropy_pruner_steps_with_torch_pruning_data_criteria(name):
    model = small_net()
    pruner = EntropyPruner(model, torch.randn(1, 3, 8, 8), create_importance(name), calibration_data=batches(),
                           pruning_ratio=0.5, iterative_steps=2, ignored_layers=[model[-1]])
    for _ in range(2):
        pruner.step()
    assert model[0].out_channels == 4 and model[3].out_channels == 4
    assert all(p.grad is None for p in model.parameters())
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_taylor_without_labels_is_a_clear_error():
    with pytest.raises(ValueError, match="labels"):
        refresh_importance(create_importance("tp-taylor"), small_net(), [torch.randn(4, 3, 8, 8)])


class PerRegion(nn.Module):
    """A head that scores 4 regions per image (like a detector's RoI head): its rows are not images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.region = nn.Linear(6, 5)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        regions = f.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2))  # (B, C, 2, 2)
        return self.region(regions.permute(0, 2, 3, 1).reshape(-1, 6))


def test_conditional_entropy_skips_layers_whose_rows_are_not_images():
    imp = ConditionalEntropyImportance(num_classes=5)
    model = PerRegion()
    imp.calibrate(model, batches(b=16))
    assert set(imp._stats) == {"conv"}  # the region head saw 4 rows per label: nothing to pair, no statistics
