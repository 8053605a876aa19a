"""The pipelines' helpers: the maximum-entropy filter freeze (2PFPCE) and the GAP classifier head (Luo & Wu 2017).

Oracles are planted or counted by hand: planted channel scores, filters whose responses are constant (entropy 0),
a channel that carries the label but has low marginal entropy against one with high marginal entropy and no label
information, masks written out index by index, parameter counts from the layer shapes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from conftest import image_batches, same_state, small_net, small_resnet, state_of

from entropy_importance import ConditionalEntropyImportance, GAPEntropyImportance, StaleStatisticsError, task_heads
from entropy_importance.pipelines.classifier import replace_classifier_with_gap
from entropy_importance.pipelines.freeze import FrozenChannels, freeze_max_entropy, frozen_count


class PlantedImportance(tp.importance.Importance):
    """Scores planted per root layer: ``scores[group root module]`` (data-free)."""

    def __init__(self, scores: dict[nn.Module, list[float]]) -> None:
        self.scores = scores

    def __call__(self, group, **kwargs):
        planted = self.scores.get(group[0].dep.target.module)
        return None if planted is None else torch.tensor(planted, dtype=torch.float32)


# small_net: 0 Conv(3, 8) - 1 BN(8) - 2 ReLU - 3 Conv(8, 8) - 4 ReLU - 5 GAP - 6 Flatten - 7 Linear(8, 5)
CONV0 = [0.0, 5.0, 1.0, 7.0, 2.0, 3.0, 6.0, 4.0]  # top quarter: channels 3 and 6
CONV3 = [9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]  # top quarter: channels 0 and 7


def planted_net() -> tuple[nn.Module, PlantedImportance]:
    model = small_net().train()
    return model, PlantedImportance({model[0]: CONV0, model[3]: CONV3})


def expected_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries the planted scores must freeze, written out by hand."""
    m = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()}
    for c in (3, 6):  # group of conv 0: its filters and bias, BN 1's entries, conv 3's input columns
        m["0.weight"][c] = True
        m["0.bias"][c] = True
        m["1.weight"][c] = True
        m["1.bias"][c] = True
        m["3.weight"][:, c] = True
    for c in (0, 7):  # group of conv 3: its filters and bias, the classifier's input columns (not its bias)
        m["3.weight"][c] = True
        m["3.bias"][c] = True
        m["7.weight"][:, c] = True
    return {k: v for k, v in m.items() if v.any()}


def frozen_snapshot(model: nn.Module, state: FrozenChannels) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach()[mask].clone() for name, mask in state.masks.items()}


def hooks_left(model: nn.Module) -> int:
    modules = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
    params = sum(len(p._backward_hooks or {}) for p in model.parameters())
    return modules + params


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


X = torch.randn(2, 3, 16, 16)


# ------------------------------------------------------------------------------------------------ which entries
def test_planted_scores_freeze_the_top_channels_of_every_group_with_their_coupled_entries():
    model, imp = planted_net()
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X) as state:
        assert state.frozen == {"0": [3, 6], "3": [0, 7]}  # the classifier (7) roots no group
        expected = expected_masks(model)
        assert sorted(state.masks) == sorted(expected)
        for name, mask in expected.items():
            assert torch.equal(state.masks[name], mask), name
        # hand count: conv0 2x3x9 + 2 bias, BN 2 + 2, conv3 rows 2x8x9 + columns 8x2x9 - overlap 2x2x9, bias 2,
        # classifier columns 5x2
        assert state.num_entries == 54 + 2 + 4 + (144 + 144 - 36) + 2 + 10
        assert not state.unscored and not state.unmapped


def test_depthwise_conv_freezes_the_same_rows_in_its_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    imp = PlantedImportance({model[0]: CONV0, model[2]: CONV0, model[5]: [1.0, 4.0, 3.0, 2.0]})
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X) as state:
        root = next(name for name in state.frozen if name in ("0", "2"))  # one group holds conv 0 and the depthwise
        assert state.frozen == {root: [3, 6], "5": [1]}
        rows = torch.zeros(8, dtype=torch.bool)
        rows[[3, 6]] = True
        for name in ("0.bias", "1.weight", "1.bias", "2.bias", "3.weight", "3.bias"):
            assert torch.equal(state.masks[name], rows), name
        assert torch.equal(state.masks["2.weight"], rows[:, None, None, None].expand(8, 1, 3, 3))
        assert torch.equal(state.masks["5.weight"][:, :, 0, 0],
                           rows[None, :].expand(4, 8) | (torch.arange(4) == 1)[:, None])


def test_residual_coupling_freezes_the_same_channels_in_every_coupled_layer():
    model = small_resnet()
    with freeze_max_entropy(model, tp.importance.MagnitudeImportance(), fraction=0.1,
                            example_inputs=torch.randn(1, 3, 32, 32)) as state:
        masks = state.masks
        chosen = masks["bn1.weight"].nonzero().flatten()
        assert len(chosen) == math.ceil(0.1 * 64)
        for name in ("conv1.weight", "bn1.bias", "layer1.0.bn2.weight", "layer1.1.bn2.bias", "layer1.1.conv2.weight"):
            rows = masks[name].reshape(64, -1).all(1)
            assert torch.equal(rows.nonzero().flatten(), chosen), name
        for name in ("layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight",
                     "layer2.0.downsample.0.weight"):
            assert masks[name][:, chosen].all(), name  # the next layers' input columns
        assert "fc.bias" not in masks and masks["fc.weight"].any(0).sum() == math.ceil(0.1 * 512)
        assert len(state.frozen) == 12 and not state.unmapped


def test_gap_entropy_freezes_the_filters_whose_response_varies():
    """GAP entropy (Luo & Wu 2017) of a zeroed filter is 0 (a constant response); the two filters kept random have
    positive entropy, so they are the top quarter. Calibrated on the fly; BN statistics untouched."""
    model = small_net().train()
    with torch.no_grad():
        model[0].weight[:6] = 0
        model[0].bias[:6] = 0
    before = state_of(model)
    imp = GAPEntropyImportance()
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X,
                            calibration_data=image_batches(2, batch=8, size=16)) as state:
        assert state.frozen["0"] == [6, 7]
        assert not imp.calibrated  # a copy was measured: the caller's instance keeps its state
        assert same_state(model, before)  # neither calibration nor the graph trace updated running statistics


def test_statistics_of_another_model_are_measured_again_when_data_is_given():
    data = image_batches(2, batch=8, size=16)
    other = small_net()
    imp = GAPEntropyImportance().calibrate(other, data)
    model = small_net()
    with torch.no_grad():
        model[0].weight[:6] = 0
        model[0].bias[:6] = 0
    with pytest.raises(StaleStatisticsError):
        with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X):
            pass
    assert hooks_left(model) == 0
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X, calibration_data=data,
                            calibration_batches=1) as state:
        assert state.frozen["0"] == [6, 7]
    with freeze_max_entropy(other, imp, fraction=0.25, example_inputs=X):  # still calibrated on ``other``
        pass


def test_conditional_entropy_freezes_by_marginal_entropy_not_by_label_information():
    """Channel 0 carries the label exactly (I(Y; Z_0) = H(Y) = log 2, H(Z_0) = log 2); channel 1 is spread evenly
    over the bins and says nothing exact about it (H(Z_1) = log 8). 2PFPCE freezes by H(Z_j): channel 1."""
    model = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    n = 64
    y = torch.arange(n) % 2
    spread = torch.randperm(n, generator=torch.Generator().manual_seed(0)).float()
    x = torch.stack([(2 * y - 1).float(), spread], 1)[:, :, None, None].expand(n, 2, 4, 4).contiguous()
    reference = ConditionalEntropyImportance(num_classes=2).calibrate(model, [(x, y)])
    assert torch.allclose(reference.marginal_entropy("0"), torch.tensor([math.log(2), math.log(8)]))
    group = next(iter(tp.DependencyGraph().build_dependency(model, x[:2]).get_all_groups(
        ignored_layers=[model[3]])))
    information = reference(group)
    assert information[0] > information[1]  # the label-aware group score alone would freeze channel 0
    with freeze_max_entropy(model, ConditionalEntropyImportance(num_classes=2), fraction=0.5, example_inputs=x[:2],
                            calibration_data=[(x, y)]) as state:
        assert state.frozen == {"0": [1]}
    with freeze_max_entropy(model, reference, fraction=0.5, example_inputs=x[:2]) as state:  # calibrated: as it is
        assert state.frozen == {"0": [1]}


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("make_optimizer", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=5e-4),
], ids=["sgd-momentum-wd", "adam"])
def test_frozen_entries_stay_bit_identical_while_the_others_train(make_optimizer):
    model, imp = planted_net()
    params = dict(model.named_parameters())
    ids = [id(p) for p in model.parameters()]
    start = {k: v.detach().clone() for k, v in params.items()}
    optimizer = make_optimizer(model.parameters())
    seen = []

    def check(module, args):  # registered after the freeze's own hook: sees what this layer's forward uses
        own = [f"{names[module]}.{n}" for n, _ in module.named_parameters(recurse=False)]
        seen.append(all(torch.equal(params[k].detach()[state.masks[k]], start[k][state.masks[k]])
                        for k in own if k in state.masks))

    names = {m: n for n, m in model.named_modules()}
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X) as state:
        handles = [model[i].register_forward_pre_hook(check) for i in (0, 1, 3, 7)]
        train_steps(model, optimizer, steps=5)
        for handle in handles:
            handle.remove()
        assert model.training
    assert seen == [True] * 4 * 5
    assert [id(p) for p in model.parameters()] == ids  # the optimiser's parameters are the model's
    for name, p in params.items():
        mask = state.masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p.detach()[mask], start[name][mask]), name
        changed = (p.detach() != start[name])[~mask]
        assert changed.float().mean() > 0.9, name
    assert hooks_left(model) == 0


def test_after_exit_hooks_are_gone_and_formerly_frozen_entries_train():
    model, imp = planted_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(4, 3, 16, 16)
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X) as state:
        train_steps(model, optimizer, steps=2)
        frozen = frozen_snapshot(model, state)
        model.zero_grad()
        model(x).sum().backward()
        for name, p in model.named_parameters():  # the tensor hooks zero exactly the frozen entries' gradient
            if name in state.masks:
                assert not p.grad[state.masks[name]].any(), name
                assert p.grad[~state.masks[name]].count_nonzero() > 0, name
    assert hooks_left(model) == 0
    train_steps(model, optimizer, steps=1, seed=7)
    params = dict(model.named_parameters())
    for name, mask in state.masks.items():
        moved = params[name].detach()[mask] != frozen[name]
        assert moved.float().mean() > 0.9, name
    model.zero_grad()
    model(x).sum().backward()
    assert (model[0].weight.grad[[3, 6]] != 0).any()  # gradients reach the formerly frozen filters again


def test_exception_inside_the_block_removes_hooks_and_restores_values():
    model, imp = planted_net()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X) as state:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
            raise RuntimeError("boom")
    assert hooks_left(model) == 0
    for name, p in model.named_parameters():
        mask = state.masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p.detach()[mask], start[name][mask]), name
        assert torch.equal(p.detach()[~mask], start[name][~mask] + 1.0), name


def test_training_modes_are_kept_per_module():
    model, imp = planted_net()
    model[1].eval()  # a BN frozen in eval mode inside a training model
    modes = [m.training for m in model.modules()]
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X):
        assert [m.training for m in model.modules()] == modes
    assert [m.training for m in model.modules()] == modes
    model.eval()
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X):
        assert not any(m.training for m in model.modules())


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("fraction", [-0.1, 1.01, float("nan"), True, "0.2"])
def test_fraction_outside_0_1_is_rejected_when_called(fraction):
    model, imp = planted_net()
    with pytest.raises(ValueError, match="fraction"):
        freeze_max_entropy(model, imp, fraction=fraction, example_inputs=X)


def test_fraction_edges_and_rounding():
    assert [frozen_count(10, f) for f in (0.0, 0.01, 0.2, 0.7, 0.71, 1.0)] == [0, 1, 2, 7, 8, 10]
    model, imp = planted_net()
    with freeze_max_entropy(model, imp, fraction=1.0, example_inputs=X) as state:
        assert state.frozen == {"0": list(range(8)), "3": list(range(8))}
        assert all(state.masks[k].all() for k in ("0.weight", "0.bias", "1.weight", "3.weight", "7.weight"))
        assert "7.bias" not in state.masks  # the classifier's own channels are never frozen
    with freeze_max_entropy(model, imp, fraction=0.0, example_inputs=X) as state:
        assert state.frozen == {} and state.num_entries == 0 and hooks_left(model) == 0


def test_data_driven_importance_without_data_is_rejected_with_the_fix():
    model = small_net()
    with pytest.raises(ValueError, match="calibration_data="):
        freeze_max_entropy(model, ConditionalEntropyImportance(), example_inputs=X)
    with pytest.raises(ValueError, match="example_inputs"):
        freeze_max_entropy(model, PlantedImportance({}))
    with pytest.raises(ValueError, match="calibration_batches"):
        freeze_max_entropy(model, GAPEntropyImportance(), example_inputs=X, calibration_data=[X], calibration_batches=0)
    with pytest.raises(ValueError, match="not a module of the model"):
        freeze_max_entropy(model, PlantedImportance({}), example_inputs=X, ignored_layers=[nn.Linear(2, 2)])


def test_ignored_layers_replace_the_default_heads():
    model, imp = planted_net()
    imp.scores[model[7]] = [0.0, 1.0, 2.0, 3.0, 4.0]
    with freeze_max_entropy(model, imp, fraction=0.25, example_inputs=X, ignored_layers=[model[3]]) as state:
        assert state.frozen == {"0": [3, 6], "7": [3, 4]}  # conv 3 roots no group; the classifier now does


# ------------------------------------------------------------------------------------------------ GAP classifier
# torchvision vgg11 by hand: convs 3-64, 64-128, 128-256, 256-256, 256-512, 3 x 512-512 (3x3, with bias)
VGG11_FEATURES = (3 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (128 * 256 * 9 + 256) + (256 * 256 * 9 + 256) \
    + (256 * 512 * 9 + 512) + 3 * (512 * 512 * 9 + 512)
VGG_FC = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg11():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.vgg11().eval()


def test_gap_head_on_torchvision_vgg11(vgg11):
    assert VGG11_FEATURES == 9_220_480 and count(vgg11) == VGG11_FEATURES + VGG_FC == 132_863_336
    before = state_of(vgg11)
    new = replace_classifier_with_gap(vgg11)
    assert count(new) == VGG11_FEATURES + 512 * 1000 + 1000 == 9_733_480
    assert isinstance(new.classifier, nn.Linear) and list(task_heads(new)) == [new.classifier]
    assert isinstance(new.avgpool, nn.AdaptiveAvgPool2d) and new.avgpool.output_size == 1
    assert not new.training and not new.classifier.training
    assert new(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert torch.count_nonzero(new.classifier.bias) == 0
    assert 0.0095 < float(new.classifier.weight.detach().std()) < 0.0105
    assert all(torch.equal(a, b) for a, b in zip(new.features.state_dict().values(),
                                                  vgg11.features.state_dict().values(), strict=True))
    assert same_state(vgg11, before) and isinstance(vgg11.classifier, nn.Sequential)  # the input is unchanged
    assert new.features[0].weight is not vgg11.features[0].weight
    ten = replace_classifier_with_gap(vgg11, num_classes=10)
    assert count(ten) == VGG11_FEATURES + 512 * 10 + 10
    assert ten(torch.randn(3, 3, 64, 64)).shape == (3, 10)


def test_gap_head_drops_the_three_fc_layers_of_vgg16():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        vgg16 = torchvision.models.vgg16()
    assert count(vgg16) == 138_357_544 and count(vgg16.features) == 14_714_688
    assert count(vgg16) - count(vgg16.features) == VGG_FC
    assert count(replace_classifier_with_gap(vgg16)) == 14_714_688 + 513_000


def test_gap_head_on_the_cifar_vgg16_bn():
    from recipes.cifar_models import vgg16_bn

    torch.manual_seed(0)
    model = vgg16_bn(num_classes=10).train()
    convs = 3 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9 + 128 * 256 * 9 + 2 * 256 * 256 * 9 \
        + 256 * 512 * 9 + 5 * 512 * 512 * 9  # no conv bias
    bns = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)
    old_head = (512 * 512 + 512) + 2 * 512 + (512 * 10 + 10)
    assert count(model) == convs + bns + old_head == 14_987_722
    before = state_of(model)
    new = replace_classifier_with_gap(model)
    assert count(new) == convs + bns + 512 * 10 + 10 == 14_724_042
    assert isinstance(new, nn.Sequential) and list(dict(new.named_children())) == ["features", "pool", "flatten",
                                                                                    "classifier"]
    assert isinstance(new.pool, nn.AdaptiveAvgPool2d) and isinstance(new.classifier, nn.Linear)
    assert new.training and new.classifier.training
    assert new.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert same_state(model, before) and isinstance(model.classifier, nn.Sequential)
    assert count(replace_classifier_with_gap(model, num_classes=100)) == convs + bns + 512 * 100 + 100


def test_models_that_are_not_vgg_style_are_rejected():
    with pytest.raises(ValueError, match="supported"):
        replace_classifier_with_gap(small_resnet())
    no_linear = nn.Sequential()
    no_linear.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3)))
    no_linear.add_module("classifier", nn.Sequential(nn.Flatten()))
    with pytest.raises(ValueError, match="supported"):
        replace_classifier_with_gap(no_linear)
    odd = nn.Sequential()
    odd.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3)))
    odd.add_module("extra", nn.Conv2d(4, 4, 1))
    odd.add_module("classifier", nn.Linear(4, 2))
    with pytest.raises(ValueError, match="supported"):
        replace_classifier_with_gap(odd)
    with pytest.raises(ValueError, match="num_classes"):
        replace_classifier_with_gap(odd, num_classes=0)
