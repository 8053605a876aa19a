"""Torch-Pruning's reduction contract with the weight-norm tie-break on.

A criterion built with ``group_reduction=None`` returns the per-layer stack of a group; built with any other
reduction it must return exactly that reduction of the stack (Torch-Pruning's tests/test_importance_reduction.py
checks this for its own importances). Torch-Pruning 1.6 reduces ``"first"`` to the first row of the stack and
``"gate"`` to the *last* row. The oracle reductions here are numpy's, on the stack, in float64.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from conftest import image_batches, small_resnet

from entropy_importance import create_importance, get_importance_info, list_importances
from entropy_importance.criteria.base import ChannelScoreImportance

CRITERIA = list_importances(source="entropy-importance")
REDUCTIONS = ["mean", "sum", "max", "prod", "first", "gate"]
ORACLES = {
    "mean": lambda s: s.mean(0),
    "sum": lambda s: s.sum(0),
    "max": lambda s: s.max(0),
    "prod": lambda s: s.prod(0),
    "first": lambda s: s[0],
    "gate": lambda s: s[-1],
}
ROOTS = ["conv1", "layer1.0.conv1"]  # a 16-dependency residual group and a plain conv -> conv one


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


def _check_reduction(reduced: torch.Tensor, stack: np.ndarray, reduction: str) -> None:
    expected = torch.from_numpy(ORACLES[reduction](stack))
    exact = reduction in ("max", "first", "gate")  # selections: no rounding at all
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {"rtol": 2e-6, "atol": 1e-6}
    torch.testing.assert_close(reduced.double(), expected, **tol)


_CACHE: dict = {}


def _setup(name: str):
    """resnet18 (10 classes, 32x32), the groups rooted at ROOTS, the calibrated criterion (built with
    ``group_reduction=None``, ``normalizer=None``, tie-break on) and its stacks with and without the tie-break;
    cached per criterion."""
    if name not in _CACHE:
        model = small_resnet()
        dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
        named = dict(model.named_modules())
        groups = {
            g[0].dep.target.name.split(" ")[0]: g
            for g in dg.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear], ignored_layers=[model.fc])
        }
        groups = {root: groups[root] for root in ROOTS}
        assert all(g[0].dep.target.module is named[root] for root, g in groups.items())
        imp = create_importance(name, group_reduction=None, normalizer=None)
        if get_importance_info(name).needs_data:
            imp.calibrate(model, image_batches(2, 4, 32))  # 8 random images, labels in [0, 10)
        stacks = {root: _np(imp(g)) for root, g in groups.items()}
        imp.tie_break = False
        raw = {root: _np(imp(g)) for root, g in groups.items()}
        imp.tie_break = True
        _CACHE[name] = groups, imp, stacks, raw
    return _CACHE[name]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", CRITERIA)
def test_reduced_score_is_the_reduction_of_the_unreduced_stack(name, reduction):
    groups, imp, stacks, _ = _setup(name)
    assert imp.tie_break
    for root, group in groups.items():
        stack = stacks[root]
        assert stack.ndim == 2 and stack.shape[1] == len(group[0].idxs), root
        imp.group_reduction = reduction  # the same calibrated criterion, now reducing
        try:
            reduced = imp(group)
        finally:
            imp.group_reduction = None
        assert reduced.shape == (stack.shape[1],)
        _check_reduction(reduced, stack, reduction)


@pytest.mark.parametrize(
    ("name", "reduction"), [("channel-similarity-entropy", "mean"), ("information-capacity", "prod")]
)
def test_contract_holds_across_separately_built_criteria(name, reduction):
    """The data-free criteria need no calibration: two independent instances, as Torch-Pruning's own test does."""
    model = small_resnet()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(64)))
    stack = _np(create_importance(name, group_reduction=None, normalizer=None)(group))
    reduced = create_importance(name, group_reduction=reduction, normalizer=None)(group)
    _check_reduction(reduced, stack, reduction)


@pytest.mark.parametrize("name", CRITERIA)
def test_tie_break_keeps_the_order_of_distinct_scores(name):
    """In every layer and under every reduction, channels whose raw (``tie_break=False``) scores clearly differ keep
    their order."""
    _, _, stacks, raws = _setup(name)
    for root in ROOTS:
        raw, broken = raws[root], stacks[root]
        pairs = list(zip(raw, broken, strict=True))  # each layer's row
        pairs += [(ORACLES[r](raw), ORACLES[r](broken)) for r in REDUCTIONS]
        for before, after in pairs:
            margin = 1e-5 * max(1.0, np.abs(before).max())  # float64 oracle of float32 scores: skip rounding-level gaps
            lower = before[:, None] < before[None, :] - margin
            assert (after[:, None] < after[None, :])[lower].all(), root


def test_all_tied_gap_entropy_is_ordered_by_weight_norm():
    """GAP entropy calibrated on 2 images gives every channel log 2: the tie-break alone orders the channels, by each
    scored layer's weight norms, and the contract holds with that large shift."""
    model = small_resnet()
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 32, 32))
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(64)))
    data = image_batches(1, 2, 32)
    plain = create_importance("gap-entropy", group_reduction=None, normalizer=None, tie_break=False)
    raw = _np(plain.calibrate(model, data)(group))
    np.testing.assert_allclose(raw, np.log(2.0), rtol=1e-6)
    assert (raw == raw[0, 0]).all()
    imp = create_importance("gap-entropy", group_reduction=None, normalizer=None).calibrate(model, data)
    stack = _np(imp(group))
    # the conv layers whose outputs carry the group's channels (GAP entropy is measured at layer outputs)
    layers = [model.conv1, model.layer1[0].conv2, model.layer1[1].conv2]
    assert stack.shape == (len(layers), 64)
    norms = [np.linalg.norm(m.weight.detach().double().numpy().reshape(64, -1), axis=1) for m in layers]
    # each row is ordered by one of these layers' norms (the rows follow the group's order, not this list's)
    row_orders = sorted(tuple(np.argsort(row, kind="stable")) for row in stack)
    assert row_orders == sorted(tuple(np.argsort(n, kind="stable")) for n in norms)
    key = sum((n - n.min()) / (n.max() - n.min()) for n in norms)
    for reduction in REDUCTIONS:
        imp.group_reduction = reduction
        reduced = imp(group)
        _check_reduction(reduced, stack, reduction)
        if reduction in ("mean", "sum"):
            assert list(np.argsort(_np(reduced), kind="stable")) == list(np.argsort(key, kind="stable"))


# ---------------------------------------------------------------- planted ties
#: per-layer planted scores: channels 1 and 2 tie exactly in both layers; every other pair differs, in the same
#: order in both layers, so every reduction orders them 4 < 0 < {1, 2} < 3 < 5.
PLANTED = {
    "conv_out": torch.tensor([1.0, 2.0, 2.0, 2.001, 0.5, 4.0]),
    "conv_in": torch.tensor([0.3, 0.7, 0.7, 0.9, 0.1, 1.2]),
}


class _Planted(ChannelScoreImportance):
    def layer_scores(self, view):
        return PLANTED[view.kind].clone()


def _planted_group(larger: int):
    """conv(3->6)-BN-ReLU-conv(6->4); channel ``larger`` of {1, 2} has the larger weight norm in both layers."""
    torch.manual_seed(7)
    first, second = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1)
    smaller = 3 - larger
    with torch.no_grad():
        first.weight[larger] = 0.5
        first.weight[smaller] = 0.25
        second.weight[:, larger] = 0.5
        second.weight[:, smaller] = 0.25
    model = nn.Sequential(first, nn.BatchNorm2d(6), nn.ReLU(), second)
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    return dg.get_pruning_group(first, tp.prune_conv_out_channels, idxs=list(range(6)))


@pytest.mark.parametrize("larger", [1, 2])
@pytest.mark.parametrize("reduction", [None, *REDUCTIONS])
def test_planted_tie_goes_to_the_larger_norm(reduction, larger):
    group = _planted_group(larger)
    expected = [4, 0, 3 - larger, larger, 3, 5]
    raw = _Planted(group_reduction=reduction, normalizer=None, tie_break=False)(group)
    broken = _Planted(group_reduction=reduction, normalizer=None)(group)
    rows = [broken] if reduction is not None else list(broken)
    if reduction is None:
        assert broken.shape == (2, 6)
        torch.testing.assert_close(raw, torch.stack([PLANTED["conv_out"], PLANTED["conv_in"]]))
    assert (raw[..., 1] == raw[..., 2]).all()
    for row in rows:
        assert torch.argsort(row).tolist() == expected
        assert row[larger] > row[3 - larger]
    stack = _np(_Planted(group_reduction=None, normalizer=None)(group))
    if reduction is not None:
        _check_reduction(broken, stack, reduction)


def test_normalizer_is_applied_after_the_reduction():
    group = _planted_group(2)
    stack = _np(_Planted(group_reduction=None, normalizer=None)(group))
    for reduction in ["mean", "sum", "prod"]:
        got = _Planted(group_reduction=reduction, normalizer="mean")(group)
        reduced = ORACLES[reduction](stack)
        torch.testing.assert_close(got.double(), torch.from_numpy(reduced / reduced.mean()), rtol=2e-6, atol=1e-6)
