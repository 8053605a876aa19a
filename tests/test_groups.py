"""Dependency classification: which weights belong to a channel, and every prunable layer contributes."""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from entropy_importance import ChannelSimilarityEntropyImportance, InformationCapacityImportance, channel_view

CRITERIA = [ChannelSimilarityEntropyImportance, InformationCapacityImportance]


def _views(model, x, root):
    dg = tp.DependencyGraph().build_dependency(model, x)
    group = dg.get_pruning_group(root, tp.prune_conv_out_channels, list(range(root.out_channels)))
    return {(dep.target.module, v.kind): v for dep, _ in group if (v := channel_view(dep)) is not None}


def test_grouped_conv_in_channel_slices():
    torch.manual_seed(0)
    first, grouped = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, groups=2)
    views = _views(nn.Sequential(first, grouped), torch.randn(1, 3, 6, 6), first)
    slices = views[(grouped, "conv_in")].slices
    w = grouped.weight.detach()
    opg, ipg = 3, 4
    for c in range(8):
        g = c // ipg
        torch.testing.assert_close(slices[c], w[g * opg:(g + 1) * opg, c % ipg].flatten(1))


def test_transposed_conv_slices():
    torch.manual_seed(1)
    first, up, last = nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 6, 2, stride=2), nn.Conv2d(6, 2, 1)
    model = nn.Sequential(first, up, last)
    x = torch.randn(1, 3, 5, 5)
    in_view = _views(model, x, first)[(up, "conv_in")].slices
    out_view = _views(model, x, up)[(up, "conv_out")].slices
    w = up.weight.detach()  # (in=4, out=6, 2, 2)
    torch.testing.assert_close(in_view, w.flatten(2))
    torch.testing.assert_close(out_view, w.transpose(0, 1).flatten(2))


def test_linear_and_depthwise_slices():
    torch.manual_seed(2)
    conv, dw = nn.Conv2d(3, 5, 1), nn.Conv2d(5, 5, 3, groups=5, padding=1)
    model = nn.Sequential(conv, dw, nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.Linear(7, 2))
    views = _views(model, torch.randn(1, 3, 4, 4), conv)
    torch.testing.assert_close(views[(dw, "depthwise")].slices, dw.weight.detach().flatten(2))
    assert views[(conv, "conv_out")].slices.shape == (5, 3, 1)
    fc = model[4]
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4))
    group = dg.get_pruning_group(model[3], tp.prune_linear_out_channels, list(range(7)))
    kinds = {(dep.target.module, v.kind): v for dep, _ in group if (v := channel_view(dep)) is not None}
    torch.testing.assert_close(kinds[(model[3], "linear_out")].slices, model[3].weight.detach().unsqueeze(-1))
    torch.testing.assert_close(kinds[(fc, "linear_in")].slices, fc.weight.detach().t().unsqueeze(-1))


class _Block(nn.Module):
    """conv -> BN -> ReLU -> depthwise -> BN -> ReLU -> 1x1."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.pw(torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.conv(x)))))))


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("layer", ["conv", "dw", "pw"])
def test_every_prunable_layer_of_the_group_contributes(criterion, layer):
    torch.manual_seed(3)
    block = _Block()
    dg = tp.DependencyGraph().build_dependency(block, torch.randn(1, 3, 8, 8))
    group = dg.get_pruning_group(block.conv, tp.prune_conv_out_channels, list(range(8)))
    imp = criterion(normalizer=None, tie_break=False)
    before = imp(group).clone()
    with torch.no_grad():  # make channel 3 degenerate in this one layer only
        module = getattr(block, layer)
        if layer == "pw":
            module.weight[:, 3] = 0.0
        else:
            module.weight[3] = 0.0
    after = imp(group)
    assert after[3] != before[3], f"{layer} does not contribute to the group score"
    assert after[3] < before[3]


def test_group_without_filter_weights_returns_none():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 4, 4))
    group = dg.get_pruning_group(model[1], tp.prune_batchnorm_out_channels, [0, 1])
    imp = ChannelSimilarityEntropyImportance(target_types=[nn.BatchNorm2d])
    assert imp(group) is None
