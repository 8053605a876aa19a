"""Data-driven criteria: planted channels, streaming, distributed merging, hooks, staleness, bad input."""

import copy

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch_pruning as tp
from conftest import image_batches, same_state, small_resnet

from entropy_importance import (
    CalibrationError,
    ConditionalEntropyImportance,
    EntropyPruner,
    FeatureMapEntropyImportance,
    GAPEntropyImportance,
    NotCalibratedError,
    StaleStatisticsError,
    create_importance,
)

DATA_DRIVEN = [GAPEntropyImportance, FeatureMapEntropyImportance, ConditionalEntropyImportance]
NUM_CLASSES = 4


class Planted(nn.Module):
    """conv1 channels: 0 dead (all zero), 1 constant, 2 carries the label, 3-5 respond to label-free noise."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)
        with torch.no_grad():
            w, b = self.conv1.weight, self.conv1.bias
            w[:, 0] = 0.0  # only channel 2 reads input channel 0, where the label lives
            w[0], b[0] = 0.0, 0.0
            w[1], b[1] = 0.0, 0.7
            w[2], b[2] = 0.0, 0.0
            w[2, 0] = 1.0 / 9

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def planted_batches(n=256, batch=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = torch.randn(n, 3, 8, 8, generator=g)
    x[:, 0] = 0.1 * x[:, 0] + y.float().view(-1, 1, 1)  # channel 0: label level + a little noise
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def conv1_scores(imp, model):
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(6)))
    return imp(group)


@pytest.mark.parametrize("cls", [GAPEntropyImportance, FeatureMapEntropyImportance])
def test_dead_and_constant_channels_rank_lowest(cls):
    model = Planted()
    imp = cls(normalizer=None, tie_break=False).calibrate(model, planted_batches())
    s = conv1_scores(imp, model)
    assert s[0] == 0 and s[1] == 0
    assert (s[2:] > 0.1).all()


def test_label_carrying_channel_ranks_highest_for_conditional_entropy():
    model = Planted()
    imp = ConditionalEntropyImportance(normalizer=None, tie_break=False, where="input", bins=None)
    imp.calibrate(model, planted_batches(n=1024))
    s = conv1_scores(imp, model)
    assert s.argmax().item() == 2
    assert s[2] > 1.0  # close to H(Y) = log 4 = 1.386
    assert s[0] == 0 and s[1] == 0
    assert (s[3:] < 0.2).all()
    h = imp.marginal_entropy("conv2")
    assert h[0] == 0 and h[1] == 0 and (h[2:] > 0).all()


@pytest.mark.parametrize("cls", DATA_DRIVEN)
@pytest.mark.parametrize("where", ["input", "output"])
def test_one_batch_of_64_equals_four_batches_of_16(cls, where):
    model = Planted()
    data = planted_batches(n=64, batch=64)
    x, y = data[0]
    one = cls(where=where, normalizer=None).calibrate(model, data)
    four = cls(where=where, normalizer=None).calibrate(model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)])
    assert set(one._stats) == set(four._stats)
    for name in one._stats:
        torch.testing.assert_close(one.score_statistic(one._stats[name]), four.score_statistic(four._stats[name]))
    torch.testing.assert_close(conv1_scores(one, model), conv1_scores(four, model))


@pytest.mark.parametrize("cls", DATA_DRIVEN)
def test_float32_statistics_under_autocast(cls):
    model = Planted()
    data = planted_batches(n=1024)
    reference = conv1_scores(cls(normalizer=None, tie_break=False).calibrate(model, data), model)
    imp = cls(normalizer=None, tie_break=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        imp.calibrate(model, data)
    scores = conv1_scores(imp, model)
    assert scores.dtype == torch.float32
    assert scores.argsort()[-1] == reference.argsort()[-1]  # the same top channel
    assert scores[0] == 0 and scores[1] == 0


def test_reservoir_bounds_memory():
    model = Planted()
    imp = GAPEntropyImportance(max_samples=100, where="input").calibrate(model, planted_batches(n=256, batch=64))
    stat = imp._stats["conv2"]
    values, _ = stat.samples()
    assert values.shape == (100, 6) and stat.num_images == 256
    everything = GAPEntropyImportance(max_samples=1000, where="input").calibrate(model, planted_batches(n=256))
    all_values, _ = everything._stats["conv2"].samples()
    # every kept row is one of the real responses
    assert (values[:, None] - all_values[None]).abs().amax(-1).min(1).values.max() < 1e-5


def _ddp_worker(rank, world, init_file, out_dir, cls_name):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = Planted()
        data = planted_batches(n=256, batch=32)
        mine = data[rank * len(data) // world:(rank + 1) * len(data) // world]
        imp = {c.__name__: c for c in DATA_DRIVEN}[cls_name](normalizer=None).calibrate(model, mine)
        torch.save(conv1_scores(imp, model), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("cls", DATA_DRIVEN)
def test_distributed_merge_equals_one_process(cls, tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), cls.__name__), nprocs=2, join=True)
    model = Planted()
    single = conv1_scores(cls(normalizer=None).calibrate(model, planted_batches(n=256, batch=32)), model)
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"rank{rank}.pt"), single)


def test_hooks_removed_and_mode_restored_after_exception():
    model = Planted().train()
    calls = []
    user_hook = model.conv2.register_forward_pre_hook(lambda m, a: calls.append(1))
    imp = GAPEntropyImportance()
    with pytest.raises(RuntimeError, match="boom"):
        with imp.observe(model):
            model(planted_batches()[0][0])
            raise RuntimeError("boom")
    assert model.training
    assert all(m.training for m in model.modules())
    assert [len(m._forward_pre_hooks) for m in (model.conv1, model.conv2, model.fc)] == [0, 1, 0]
    assert not any(m._forward_hooks for m in model.modules())
    model(planted_batches()[0][0])
    assert len(calls) == 2  # the user's hook survived
    user_hook.remove()
    assert not any(vars(m).get("_importance") is not None for m in model.modules())  # nothing stored on modules


def test_observe_with_targets_in_a_custom_loop():
    model = Planted()
    imp = ConditionalEntropyImportance(normalizer=None, tie_break=False)
    with imp.observe(model) as obs:
        for x, y in planted_batches(n=1024):
            obs.targets = y
            model(x)
    assert conv1_scores(imp, model).argmax().item() == 2


def test_stale_statistics_after_a_pruning_step():
    model = small_resnet()
    x = torch.randn(1, 3, 32, 32)
    imp = create_importance("gap-entropy").calibrate(model, image_batches())
    pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.5, iterative_steps=2,
                                  ignored_layers=[model.fc])
    pruner.step()
    with pytest.raises(StaleStatisticsError, match=r"layer '[\w.]+' were collected with \d+ channels.*calibrate"):
        pruner.step()


@pytest.mark.parametrize("name", ["gap-entropy", "feature-map-entropy", "conditional-entropy"])
def test_entropy_pruner_iterative_steps(name):
    model = small_resnet()
    x = torch.randn(1, 3, 32, 32)
    widths = []
    pruner = EntropyPruner(model, x, create_importance(name), calibration_data=image_batches(),
                           pruning_ratio=0.5, iterative_steps=3, ignored_layers=[model.fc])
    for _ in range(3):
        pruner.step()
        widths.append(model.layer1[0].conv1.out_channels)
    assert widths == [int(64 * (1 - 0.5 * k / 3)) for k in (1, 2, 3)]  # Torch-Pruning keeps int(n * (1 - r))
    assert model(x).shape == (1, 10)


def _unchanged(model, reference):
    return same_state(model, reference.state_dict())


def _prune_with(imp, data, model=None):
    model = model or small_resnet()
    reference = copy.deepcopy(model)
    pruner = EntropyPruner(model, torch.randn(1, 3, 32, 32), imp, calibration_data=data, pruning_ratio=0.5,
                           ignored_layers=[model.fc])
    return model, reference, pruner


def test_uncalibrated_importance_is_a_clear_error():
    model = small_resnet()
    reference = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(model, torch.randn(1, 3, 32, 32), importance=GAPEntropyImportance(),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    with pytest.raises(NotCalibratedError, match="calibrate"):
        pruner.step()
    assert _unchanged(model, reference)


@pytest.mark.parametrize(
    "imp, data, message",
    [
        (GAPEntropyImportance(), [], "no batches"),
        (GAPEntropyImportance(), [torch.full((4, 3, 32, 32), float("nan"))], r"non-finite .* layer 'conv1'"),
        (ConditionalEntropyImportance(), [torch.randn(4, 3, 32, 32)], "needs class labels"),
        (ConditionalEntropyImportance(num_classes=3), [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 5]))],
         "labels out of range"),
        (ConditionalEntropyImportance(), [(torch.randn(4, 3, 32, 32), torch.rand(4))], "integer class ids"),
    ],
    ids=["empty", "nan", "no-labels", "labels-out-of-range", "float-labels"],
)
def test_bad_calibration_input_leaves_model_unchanged(imp, data, message):
    model, reference, pruner = _prune_with(imp, data)
    with pytest.raises(CalibrationError, match=message):
        pruner.step()
    assert _unchanged(model, reference)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_entropy_pruner_requires_data_for_data_driven_criteria():
    model = small_resnet()
    with pytest.raises(ValueError, match="calibration_data"):
        EntropyPruner(model, torch.randn(1, 3, 32, 32), GAPEntropyImportance(), pruning_ratio=0.5)


@pytest.mark.parametrize("cls, kwargs", [
    (GAPEntropyImportance, {"bins": 1}), (GAPEntropyImportance, {"edges": "x"}),
    (GAPEntropyImportance, {"max_samples": 1}), (GAPEntropyImportance, {"where": "middle"}),
    (FeatureMapEntropyImportance, {"bin_range": "image"}), (ConditionalEntropyImportance, {"num_classes": 1}),
])
def test_bad_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)
