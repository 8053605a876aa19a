"""``entropy_importance.prune()``: automatic configuration, isolation of breaking groups, speed-up targets."""

import copy

import pytest
import torch
import torch.nn as nn
from conftest import CrossStage, same_state, state_of

from entropy_importance import PruneReport, create_importance, prune
from entropy_importance.repairs import active as repairs_active
from recipes.cifar_models import resnet56


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


def test_breaking_group_is_kept_and_the_rest_pruned():
    model = FixedWidthReshape().eval()
    before = state_of(model)
    x = torch.randn(2, 3, 8, 8)
    pruned, report = prune(model, x, "channel-similarity-entropy", ratio=0.5)
    assert same_state(model, before)  # the caller's model is untouched
    assert pruned.conv_b.out_channels == 16
    assert "conv_b" in report.kept_unpruned and "forward" in report.kept_unpruned["conv_b"]
    assert report.kept_unpruned["fc"] == "classifier"
    assert pruned.conv_a.out_channels == 8 and pruned.conv_c.out_channels == 16
    assert pruned(x).shape == (2, 5)
    assert report.params_after < report.params_before and report.rounds == 2
    assert not repairs_active()  # the isolation left no repairs block open in this thread


def test_speed_up_target_is_reached_by_a_one_shot_ratio_search():
    from entropy_importance.engine import tp_macs

    model = resnet56(10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune(model, x, "information-capacity", speed_up=2.0, global_pruning=True)
    assert isinstance(report, PruneReport)
    assert 2.0 <= report.speed_up <= 2.0 * 1.05 and report.steps == 1
    # oracle: a one-shot prune at the ratio found gives the same network, and MACs counted independently agree
    again, _ = prune(model, x, "information-capacity", ratio=report.ratio, global_pruning=True)
    assert tp_macs(again, x) == tp_macs(pruned, x) == report.macs_after
    assert pruned(x).shape == (1, 10)
    assert model.conv1.out_channels == 16  # caller's model untouched


def test_speed_up_target_is_reached_progressively_with_a_step_size():
    model = resnet56(10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned, report = prune(model, x, "information-capacity", speed_up=2.0, schedule="progressive", step_ratio=0.02)
    # local pruning removes 2 % of every group's channels per step; ratio 0.25 (12-13 steps) halves conv MACs:
    # by hand, (1 - r)^2 = 1/2 at r = 0.29, so 2x needs 14-16 steps of 0.02 (the stem and classifier stay)
    assert 2.0 <= report.speed_up < 2.3 and 12 <= report.steps <= 18
    assert pruned(x).shape == (1, 10)


def test_speed_up_that_cannot_be_reached_is_a_clear_error():
    model = resnet56(10).eval()
    with pytest.raises(RuntimeError, match="not reached within 3 steps"):
        prune(model, torch.randn(1, 3, 32, 32), "information-capacity", speed_up=2.0, schedule="progressive",
              step_ratio=0.02, max_steps=3)


def test_data_driven_criterion_is_calibrated_on_the_model_being_pruned():
    model = resnet56(10).eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
    imp = create_importance("conditional-entropy")
    pruned, report = prune(model, torch.randn(1, 3, 32, 32), imp, speed_up=1.5, calibration_data=data,
                           schedule="progressive", step_ratio=0.05)
    assert report.speed_up >= 1.5 and report.steps > 1
    assert not imp.calibrated  # the caller's instance is left as it was: the engine works on a copy


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
    before = state_of(model)
    kwargs = {"importance": "channel-similarity-entropy", **kwargs}
    with pytest.raises(error):
        prune(model, torch.randn(1, 3, 8, 8), **kwargs)
    assert same_state(model, before)


def test_a_failing_calibration_leaves_the_model_unchanged():
    model = FixedWidthReshape().eval()
    reference = copy.deepcopy(model)
    with pytest.raises(ValueError, match="labels"):
        prune(model, torch.randn(1, 3, 8, 8), "conditional-entropy", calibration_data=[torch.randn(4, 3, 8, 8)])
    assert same_state(model, reference.state_dict())


def test_prune_with_taylor_and_no_data_is_an_argument_error():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="needs data: pass calibration_data"):
        prune(model, torch.randn(1, 3, 32, 32), "tp-taylor", ratio=0.3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_split_and_concat_widths_are_exact():
    import torch_pruning as tp

    from entropy_importance import repairs

    model, x = CrossStage().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match="NoneType"):  # the Torch-Pruning failure this works around
        tp.DependencyGraph().build_dependency(copy.deepcopy(model), x)
    work = copy.deepcopy(model)
    with repairs():
        graph = tp.DependencyGraph().build_dependency(work, x)
        # expand filters 0, 1 (shortcut half) and 17, 31 (residual half, block channels 1 and 15)
        graph.get_pruning_group(work.expand, tp.prune_conv_out_channels, idxs=[0, 1, 17, 31]).prune()
    # hand-derived oracle: the concat is [residual, shortcut], so the transition loses columns 1, 15 (residual
    # half) and 16 + 0, 16 + 1 (shortcut half); the block loses input and output channels 1 and 15
    keep = lambda n, drop: [i for i in range(n) if i not in drop]  # noqa: E731
    assert torch.equal(work.transition.weight, model.transition.weight[:, keep(32, {1, 15, 16, 17})])
    assert torch.equal(work.block.weight, model.block.weight[keep(16, {1, 15})][:, keep(16, {1, 15})])
    assert torch.equal(work.expand.weight, model.expand.weight[keep(32, {0, 1, 17, 31})])
    assert work(x).shape == (2, 5)


def _torch_pruning_functions():
    from entropy_importance.repairs import REPAIRED

    return [vars(owner)[name] for owner, name, _ in REPAIRED]


def test_prune_restores_torch_pruning_after_the_call():
    before = _torch_pruning_functions()
    pruned, report = prune(CrossStage().eval(), torch.randn(2, 3, 8, 8), "information-capacity", ratio=0.5)
    assert _torch_pruning_functions() == before
    assert report.params_after < report.params_before and pruned(torch.randn(1, 3, 8, 8)).shape == (1, 5)


def test_torch_pruning_is_restored_after_an_exception_inside_repairs():
    from entropy_importance import repairs

    before = _torch_pruning_functions()
    with pytest.raises(KeyError), repairs():
        assert _torch_pruning_functions() != before
        raise KeyError("boom")
    assert _torch_pruning_functions() == before


class RepeatedBlocks(nn.Module):
    """Three identical residual MLP blocks on a 16-wide stream."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _failing_on(monkeypatch, layer_index: int, failure):
    """Make Torch-Pruning fail (``failure(module)``) when it forms the group rooted at ``blocks.1.<layer_index>``
    (in the group search of the repairs, :func:`entropy_importance.repairs.get_pruning_group`)."""
    from entropy_importance.repairs import patching

    def failing_search(repair):
        def get_pruning_group(original, self, module, pruning_fn, idxs):
            if getattr(module, "_fail_here", False):
                failure(module)
            return repair(original, self, module, pruning_fn, idxs)
        return get_pruning_group

    monkeypatch.setattr(patching, "REPAIRED", tuple(
        (owner, name, failing_search(repair) if name == "get_pruning_group" else repair)
        for owner, name, repair in patching.REPAIRED))
    model = RepeatedBlocks().eval()
    model.blocks[1][layer_index]._fail_here = True
    return model


def test_group_torch_pruning_cannot_form_is_kept_with_its_copies_in_repeated_blocks(monkeypatch):
    def fail(module):
        raise ZeroDivisionError("integer division or modulo by zero")

    model = _failing_on(monkeypatch, 0, fail)
    pruned, report = prune(model, torch.randn(2, 8), "information-capacity", ratio=0.5)
    # hand-derived: the group of blocks.1.0 (its 32 hidden units) fails to form; blocks.0.0 and blocks.2.0 are the
    # same layer of the repeated block and are kept in the same round (a second round then succeeds); the other
    # layer of each block (blocks.*.2, the trailing index names a different layer) is not kept, so the 16-wide
    # stream is still pruned to 8, which the kept layers' inputs follow
    assert "cannot form this group (ZeroDivisionError" in report.kept_unpruned["blocks.1.0"]
    assert report.kept_unpruned["blocks.0.0"].startswith("like blocks.1.0")
    assert report.kept_unpruned["blocks.2.0"].startswith("like blocks.1.0")
    assert [b[0].out_features for b in pruned.blocks] == [32, 32, 32]
    assert pruned.stem.out_features == 8 and report.rounds == 2
    assert {b[0].in_features for b in pruned.blocks} == {8} and "blocks.0.2" not in report.kept_unpruned


def test_group_that_takes_too_long_to_form_is_kept(monkeypatch):
    import time

    from entropy_importance.repairs import group_search

    bound = group_search._ChannelBound.__call__

    def slow_bound(self, node, fn):  # slow only in the group of blocks.1.0's hidden units: blocks.1.2's inputs
        if getattr(node.module, "_slow_inputs", False) and "in_channels" in fn.__name__:
            time.sleep(0.7)
        return bound(self, node, fn)

    monkeypatch.setattr(group_search._ChannelBound, "__call__", slow_bound)
    model = RepeatedBlocks().eval()
    model.blocks[1][2]._slow_inputs = True
    pruned, report = prune(model, torch.randn(2, 8), "information-capacity", ratio=0.5, group_time_limit=0.5)
    assert "GroupFormationTimeout" in report.kept_unpruned["blocks.1.0"]
    assert [b[0].out_features for b in pruned.blocks] == [32, 32, 32] and report.rounds == 2


class BlocksWithFixedWidth(RepeatedBlocks):
    """Each block reshapes its 32 hidden units with a hard-coded width: pruning any block's hidden group breaks."""

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block[2](block[1](block[0](x)).reshape(-1, 32))
        return self.head(x)


def test_second_break_at_the_same_place_keeps_every_copy():
    pruned, report = prune(BlocksWithFixedWidth().eval(), torch.randn(2, 8), "information-capacity", ratio=0.5)
    # hand-derived: round 1 keeps the first breaking block alone (it could be the only one); round 2 breaks at the
    # same place in another block, so the third copy is kept with it; round 3 succeeds: 3 rounds, not 4
    kept = report.kept_unpruned
    assert sum(kept[f"blocks.{i}.0"].startswith("pruning breaks the forward pass") for i in range(3)) == 2
    assert sum(kept[f"blocks.{i}.0"].startswith("like blocks.") for i in range(3)) == 1
    assert report.rounds == 3 and [b[0].out_features for b in pruned.blocks] == [32, 32, 32]


@pytest.mark.parametrize("limit", [0, -1.0, "10"])
def test_bad_group_time_limit_is_an_argument_error(limit):
    model = RepeatedBlocks().eval()
    with pytest.raises(ValueError, match="group_time_limit must be a number of seconds > 0"):
        prune(model, torch.randn(2, 8), "information-capacity", group_time_limit=limit)


def test_a_model_without_breaking_groups_is_checked_once_not_once_per_group():
    model = RepeatedBlocks().eval()
    torch.manual_seed(0)
    model.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)) for _ in range(12))
    calls = []
    model.stem.register_forward_hook(lambda *args: calls.append(1))  # deep copies carry the hook: counts them all
    pruned, report = prune(model, torch.randn(2, 8), "information-capacity", ratio=0.5)
    assert report.rounds == 1 and {b[0].out_features for b in pruned.blocks} == {16}
    # 13 prunable groups (12 hidden widths + the stream); a forward check per group would alone make 13 passes.
    # Counted by hand: the base's reference pass (which also counts its MACs and widths), Torch-Pruning's trace, and
    # one check after the step (which counts the pruned model's MACs and widths) = 3
    assert len(calls) == 3


def test_shufflenet_keeps_the_convs_whose_channels_cross_a_channel_shuffle():
    import torchvision

    # Torch-Pruning 1.6 divides by zero building the graph of a channel shuffle (view to 5-d, transpose, view back);
    # the reshape now stops groups instead, and prune() finds that pruning across it breaks the forward pass. By
    # hand: a unit's output convs (branch2.5; branch1.2 of the first unit of a stage) feed the shuffle and keep their
    # width; the convs inside branch2 (branch2.0 -> depthwise branch2.3 -> branch2.5's input) do not cross it
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    pruned, report = prune(model, torch.randn(1, 3, 64, 64), "information-capacity", ratio=0.5)
    convs, before = dict(pruned.named_modules()), dict(model.named_modules())
    for stage, units in (("stage2", 4), ("stage3", 8), ("stage4", 4)):
        for unit in range(units):
            inner, original = convs[f"{stage}.{unit}.branch2.0"], before[f"{stage}.{unit}.branch2.0"]
            assert inner.out_channels == original.out_channels // 2
            assert convs[f"{stage}.{unit}.branch2.5"].out_channels == original.out_channels
        assert f"{stage}.0.branch1.2" in report.kept_unpruned
    assert pruned(torch.randn(2, 3, 64, 64)).shape == (2, 10) and report.speed_up > 1.5


def test_per_channel_parameters_of_a_conv_subclass_are_pruned_with_its_weight():
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)
    model = nn.Sequential(ScaledStdConv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].gain.copy_(torch.arange(1.0, 9.0).view(8, 1, 1, 1))  # a distinct gain per output channel
    pruned, report = prune(model, torch.randn(1, 3, 8, 8), "information-capacity", ratio=0.5)
    # the channels that stayed are found by their weight rows; each must keep its own gain (Torch-Pruning alone
    # leaves the 8 gains, and the layer's forward fails: "weight should contain 4 elements not 8")
    rows = [next(c for c in range(8) if torch.equal(model[0].weight[c], w)) for w in pruned[0].weight]
    assert len(rows) == 4 and pruned[0].gain.flatten().tolist() == [float(c + 1) for c in rows]
    assert report.rounds == 1 and pruned(torch.randn(2, 3, 8, 8)).shape == (2, 2)


def test_classifier_layers_last_only_leaves_a_multi_layer_head_prunable():
    from entropy_importance.engine import classifier_layers
    from recipes.cifar_models import vgg16_bn

    vgg, res = vgg16_bn(10), resnet56(10)
    assert classifier_layers(vgg) == [vgg.classifier] and classifier_layers(vgg, last_only=True) == [vgg.classifier[3]]
    assert classifier_layers(res) == classifier_layers(res, last_only=True) == [res.fc]


def test_only_fused_qkv_attention_gets_heads_and_a_synced_head_dim():
    from entropy_importance.engine import attention_num_heads, sync_attention_heads

    class Attention(nn.Module):
        def __init__(self, outputs_per_head: int):  # 3: q, k, v (ViT); 2: k, v only (GCViT's global attention)
            super().__init__()
            self.num_heads, self.head_dim = 4, 8
            self.qkv = nn.Linear(32, outputs_per_head * 32)

    model = nn.Sequential(Attention(3), Attention(2))
    assert attention_num_heads(model) == {model[0].qkv: 4}
    model[0].qkv.out_features = model[1].qkv.out_features = 48  # as if pruned: 48 = 3 q/k/v x 4 heads x 4
    sync_attention_heads(model)
    assert (model[0].head_dim, model[1].head_dim) == (4, 8)


RATIOS = [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99]


@pytest.mark.parametrize("global_pruning", [False, True])
def test_speed_up_never_falls_as_the_ratio_rises(global_pruning):
    import timm

    torch.manual_seed(0)
    model, x = timm.create_model("resnet18", num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    speed_ups = []
    for ratio in RATIOS:
        pruned, report = prune(model, x, "tp-magnitude-l2", ratio=ratio, global_pruning=global_pruning)
        speed_ups.append(report.speed_up)
        assert min(m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)) >= 1
        assert report.kept_unpruned == {"fc": "classifier"}  # nothing else left whole, nothing left unsaid
    assert speed_ups == sorted(speed_ups), dict(zip(RATIOS, speed_ups, strict=True))
    assert speed_ups[-1] > 100  # 3.11x before: at 0.99 the 64-channel stem and layer1 were left whole


def test_local_pruning_keeps_one_channel_where_the_ratio_leaves_none():
    import timm

    torch.manual_seed(0)
    model, x = timm.create_model("resnet18", num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    pruned, report = prune(model, x, "tp-magnitude-l2", ratio=0.99)
    before = dict(model.named_modules())
    # Torch-Pruning's local rule keeps int(C * (1 - ratio)) of a group's C channels: 0 for C < 100 at 0.99, where
    # Torch-Pruning 1.6 skipped the group (the stem and layer1 stayed at 64); the floor is one channel
    for name, conv in pruned.named_modules():
        if isinstance(conv, nn.Conv2d):
            assert conv.out_channels == max(1, int(before[name].out_channels * (1 - 0.99))), name
    assert pruned.conv1.out_channels == 1 and pruned.layer4[1].conv2.out_channels == 5
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10) and report.steps == 1


class GroupedChain(nn.Module):
    """conv (8) -> grouped conv (8, 2 groups of 4) -> conv (4) -> classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.c(torch.relu(self.g(torch.relu(self.a(x))))).mean((2, 3)))


def test_a_grouped_layer_keeps_one_channel_per_channel_group():
    model, x = GroupedChain().eval(), torch.randn(2, 3, 8, 8)
    pruned, report = prune(model, x, "tp-magnitude-l2", ratio=0.99)
    # by hand: g's output and a's output (g's input) come in 2 channel groups of 4; int(4 x 0.01) = 0 per group,
    # so the floor is one channel in each group: 2; c (4 channels, no groups) keeps 1
    assert (pruned.a.out_channels, pruned.g.out_channels, pruned.g.in_channels, pruned.c.out_channels) == (2, 2, 2, 1)
    assert pruned(x).shape == (2, 3) and report.kept_unpruned == {"fc": "classifier"}


class ResidualStream(nn.Module):
    """stem (16) -> + b(relu(a(x))) (a: 16 -> 32 hidden, b: 32 -> 16) -> classifier: the stream group holds stem's
    and b's outputs, the hidden group a's outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b(torch.relu(self.a(x)))
        return self.fc(x.mean((2, 3)))


def test_a_group_coupled_with_a_kept_layer_is_reported_with_it():
    model, x = ResidualStream().eval(), torch.randn(2, 3, 8, 8)
    pruned, report = prune(model, x, "tp-magnitude-l2", ratio=0.5, ignored_layers=[model.b])
    # by hand: keeping b keeps its output channels, which are the stream's (the residual add): stem stays at 16;
    # the hidden group (a's outputs, b's inputs) is pruned to 16
    assert (pruned.stem.out_channels, pruned.a.out_channels, pruned.b.in_channels) == (16, 16, 16)
    assert report.kept_unpruned == {"fc": "classifier", "b": "ignored by the caller",
                                    "stem": "its channels are coupled with 'b', which is kept unpruned"}


def test_a_group_the_criterion_does_not_score_is_reported():
    import torch_pruning as tp

    class NotA(tp.importance.GroupMagnitudeImportance):
        def __call__(self, group, **kwargs):
            return None if isinstance(group[0].dep.target.module, nn.Conv2d) and \
                group[0].dep.target.module.out_channels == 32 else super().__call__(group, **kwargs)

    model, x = ResidualStream().eval(), torch.randn(2, 3, 8, 8)
    pruned, report = prune(model, x, NotA(), ratio=0.5)
    assert (pruned.stem.out_channels, pruned.a.out_channels) == (8, 32)  # a's group unscored: left whole
    assert report.kept_unpruned == {"fc": "classifier", "a": "NotA gives this group no scores"}


@pytest.mark.parametrize("criterion", ["gap-entropy", "tp-taylor"])
def test_calibration_batches_the_model_cannot_run_are_one_error_before_pruning(criterion):
    from conftest import image_batches

    from entropy_importance import CalibrationError

    model = resnet56(10).eval()
    before = state_of(model)
    good, grey = image_batches(2), image_batches(1, channels=1)
    for data, index in ((grey, 0), (good + grey, 2)):
        with pytest.raises(CalibrationError) as raised:
            prune(model, torch.randn(1, 3, 32, 32), criterion, ratio=0.5, calibration_data=data)
        message = str(raised.value)
        assert message.startswith(f"calibration batch {index} does not run through the model: ")
        assert "expected input[8, 1, 32, 32] to have 3 channels" in message  # PyTorch's first line, kept
        assert message.endswith("; give batches shaped like the model's inputs") and "\n" not in message
    assert same_state(model, before)
