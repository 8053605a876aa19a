"""EFP with a target: the paper's selection rule per round, the threshold adapted where it stops short, the target
spread over the rounds; checked on a tiny net trained on real Fashion-MNIST, on random weights, and on planted dead
maps. MAC speed-ups are Torch-Pruning's counter (``tp_macs``) on the models, not the report's numbers."""

import math

import pytest
import torch
import torch.nn as nn
from conftest import image_batches, same_state, state_of
from test_pipelines import Plain, X, _finetune_seeded

from entropy_importance import Engine
from entropy_importance.data import fashion_mnist
from entropy_importance.engine import tp_macs
from entropy_importance.pipelines import create_pipeline, relative_scores, select_maps

ROUNDS = 4
TOLERANCE = 0.05  # the overshoot the last round may leave


class Tiny(nn.Module):
    """Four conv-BN-ReLU layers (two with stride 2) and a classifier, on native 1x28x28 images."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)

        def block(a, b, stride):
            return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU())

        self.features = nn.Sequential(block(1, 16, 1), block(16, 32, 2), block(32, 32, 1), block(32, 48, 2))
        self.classifier = nn.Linear(48, 10)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def trained(fashion_mnist_dir):
    """Tiny trained for 200 SGD steps (32 images each) on real Fashion-MNIST; its test accuracy and calibration
    batches."""
    x, y = fashion_mnist("train", size=28, channels=1, limit=4096).tensors
    xt, yt = fashion_mnist("test", size=28, channels=1, limit=1000).tensors
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):
        idx = torch.randint(0, len(y), (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    return model, accuracy, list(zip(x[:256].split(64), y[:256].split(64), strict=True))


def _speed_ups(model, pruned, report, x):
    """The measured speed-up of ``pruned`` and, from the stages' MAC records, the cumulative one after each round."""
    base = tp_macs(model, x)
    rounds = [base / s.macs for s in report.stages if s.stage.kind == "round"]
    return base / tp_macs(pruned, x), rounds


def _check_schedule(rounds: list[float], target: float, n_rounds: int) -> None:
    """Every round reaches its share of the target (``g (T/g)^(1/left)`` from the previous round's ``g``) and an
    adapted round does not go far past it: the last round is not a huge one."""
    previous = 1.0
    for k, reached in enumerate(rounds):
        left = n_rounds - k
        goal = target if left == 1 else previous * (target / previous) ** (1 / left)
        assert reached >= goal * (1 - 1e-9), (k, reached, goal)
        previous = reached
    # the factor of the last round is about the even share T^(1/R), not what the earlier rounds left over
    factor = rounds[-1] / (rounds[-2] if len(rounds) > 1 else 1.0)
    assert factor <= target ** (1 / n_rounds) * (1 + 2 * TOLERANCE)


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_efp_reaches_the_target_on_a_net_trained_on_fashion_mnist(trained, target):
    model, accuracy, data = trained
    assert accuracy > 0.6  # the net did learn: its entropies are a trained network's
    x = data[0][0][:1]
    pruned, report = create_pipeline("efp", rounds=ROUNDS).run(model, x, calibration_data=data, speed_up=target,
        recover=None)
    measured, rounds = _speed_ups(model, pruned, report, x)
    assert target <= measured <= target * (1 + TOLERANCE)
    _check_schedule(rounds, target, ROUNDS)
    selection = report.options["selection"]
    # the paper's threshold alone stops short on a trained net (this is the failure the adaptation fixes) ...
    assert any(r["rule"] == "adapted" for r in selection)
    # ... and the report says which rounds used which threshold, in the stage names and the options
    names = [s.stage.name for s in report.stages if s.stage.kind == "round"]
    assert len(names) == len(selection)
    for name, r in zip(names, selection, strict=True):
        assert ("adapted alpha" in name) == (r["rule"] == "adapted")
        assert r["maps"] >= r["paper_maps"]  # an adapted round under the goal takes the paper's maps and more
    assert pruned(x).shape == (1, 10)


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_efp_reaches_the_target_on_random_weights(target):
    model, x = Tiny(seed=1).eval(), torch.randn(1, 1, 28, 28)
    data = image_batches(4, 16, 28, channels=1)
    pruned, report = create_pipeline("efp", rounds=ROUNDS).run(model, x, calibration_data=data, speed_up=target,
        recover=None)
    measured, rounds = _speed_ups(model, pruned, report, x)
    assert target <= measured <= target * (1 + TOLERANCE)
    _check_schedule(rounds, target, ROUNDS)


def test_efp_reaches_a_channel_ratio():
    model, x = Tiny(seed=2).eval(), torch.randn(1, 1, 28, 28)
    pruned, report = create_pipeline("efp", rounds=3).run(model, x, calibration_data=image_batches(4, 16, 28,
                                                                                                   channels=1),
                                                          ratio=0.5, recover=None)
    widths = [m.out_channels for m in pruned.features.modules() if isinstance(m, nn.Conv2d)]
    removed = 1 - sum(widths) / (16 + 32 + 32 + 48)
    assert 0.5 <= removed <= 0.5 + 3 / 128  # a few maps of 128 past it at most
    assert report.options["selection"][-1]["reached"] == pytest.approx(removed)


def _dead_only_speed_up(dead) -> float:
    """Oracle: the MAC speed-up of removing exactly the planted maps, from a net built with that width."""
    slim = Plain()
    slim.features[1][0] = nn.Conv2d(16, 16 - len(dead), 3, padding=1)
    slim.features[1][1] = nn.BatchNorm2d(16 - len(dead))
    slim.features[2][0] = nn.Conv2d(16 - len(dead), 16, 3, padding=1)
    return tp_macs(Plain(), X) / tp_macs(slim, X)


def _removed_rows(model, pruned):
    """Which maps of ``features.1.0`` are gone, matched by their bias (0 for the planted maps, distinct for the
    others; the weights' input columns change when the layer before is pruned)."""
    original = model.features[1][0].bias.tolist()
    healthy = [b for c, b in enumerate(original) if c not in DEAD]
    assert len(set(healthy)) == len(healthy) and 0.0 not in healthy
    kept = pruned.features[1][0].bias.tolist()
    dead_kept = sum(b == 0.0 for b in kept)
    healthy_removed = {c for c, b in enumerate(original) if c not in DEAD and b not in kept}
    dead_removed = set(DEAD[:len(DEAD) - dead_kept])  # the planted maps are alike: which of them went is moot
    return dead_removed | healthy_removed


DEAD = (2, 5, 11)


def test_a_target_the_dead_maps_reach_removes_exactly_them_with_the_papers_threshold():
    model = Plain(dead=DEAD).eval()
    target = _dead_only_speed_up(DEAD) * 0.99
    pruned, report = create_pipeline("efp", alpha=0.5, rounds=1).run(
        model, X, calibration_data=image_batches(4, 8, 16), speed_up=target, recover=None)
    assert report.stages[0].stage.name == "round 1" and report.options["selection"][0]["rule"] == "paper"
    assert report.stages[0].pruned == {"features.1.0": 3}
    assert _removed_rows(model, pruned) == set(DEAD)


def test_a_target_beyond_the_dead_maps_removes_them_first_then_healthy_ones():
    model = Plain(dead=DEAD).eval()
    target = 1 + 2.5 * (_dead_only_speed_up(DEAD) - 1)
    pruned, report = create_pipeline("efp", alpha=0.5, rounds=1).run(
        model, X, calibration_data=image_batches(4, 8, 16), speed_up=target, recover=None)
    assert "adapted alpha" in report.stages[0].stage.name
    assert report.options["selection"][0]["paper_maps"] == 3
    assert set(DEAD) <= _removed_rows(model, pruned)
    assert tp_macs(model, X) / tp_macs(pruned, X) >= target


def test_a_target_short_of_the_dead_maps_removes_no_healthy_map():
    model = Plain(dead=DEAD).eval()
    target = 1 + (_dead_only_speed_up(DEAD) - 1) / 3  # about one of the three dead maps
    pruned, report = create_pipeline("efp", alpha=0.5, rounds=1).run(
        model, X, calibration_data=image_batches(4, 8, 16), speed_up=target, recover=None)
    removed = _removed_rows(model, pruned)
    assert removed and removed <= set(DEAD)
    assert sum(report.stages[0].pruned.values()) == len(removed)  # and nothing elsewhere
    assert report.options["selection"][0]["rule"] == "adapted"  # the paper's 3 maps would overshoot


def test_an_unreachable_target_fails_before_any_finetune():
    calls = []
    model = Plain().eval()
    state = state_of(model)
    with pytest.raises(RuntimeError, match=r"^efp: target not reached \(3.0x\): even with every layer at its floor"):
        create_pipeline("efp", min_keep_ratio=0.8).run(model, X, calibration_data=image_batches(2, 8, 16),
                                                       speed_up=3.0, finetune=lambda m, s: calls.append(s),
                                                           recover=None)
    assert calls == [] and same_state(model, state)


def test_resume_of_a_target_run_equals_an_uninterrupted_run(tmp_path):
    model, data = Plain().eval(), image_batches(2, 8, 16)
    kwargs = dict(calibration_data=data, speed_up=2.0)
    reference, ref_report = create_pipeline("efp", rounds=3).run(model, X, finetune=_finetune_seeded(), **kwargs,
        recover=None)
    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        create_pipeline("efp", rounds=3).run(model, X, checkpoint=ckpt, finetune=_finetune_seeded(fail_at=1),
                                             **kwargs, recover=None)
    resumed, report = create_pipeline("efp", rounds=3).run(model, X, resume=ckpt, finetune=_finetune_seeded(),
                                                           **kwargs, recover=None)
    assert [s.stage for s in report.stages] == [s.stage for s in ref_report.stages]
    assert report.options["selection"] == ref_report.options["selection"]
    assert same_state(resumed, reference.state_dict())


def test_relative_scores():
    assert relative_scores(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert relative_scores(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]  # a flat layer: every map at the mean


def test_an_adapted_round_is_the_papers_rule_at_the_recorded_alpha():
    model, data = Plain(dead=DEAD).eval(), image_batches(4, 8, 16)
    target = 1 + 2.5 * (_dead_only_speed_up(DEAD) - 1)
    _, report = create_pipeline("efp", alpha=0.5, rounds=1).run(model, X, calibration_data=data, speed_up=target,
        recover=None)
    alpha = report.options["selection"][0]["alpha"]
    assert alpha > 0.5
    # the oracle: the selection rule itself, applied at that alpha to the criterion's raw scores of the model
    engine = Engine(model, X, "feature-map-entropy", calibration_data=data)
    work = engine.fresh_copy()
    engine.measure(work, fresh=True)
    engine.importance.normalizer = None
    expected = {}
    for name, scores in engine.group_scores(work).items():
        drop = select_maps(scores, alpha, max(1, math.ceil(0.1 * 16)))
        if drop and name != "classifier":
            expected[name] = drop
    assert report.stages[0].pruned == expected
