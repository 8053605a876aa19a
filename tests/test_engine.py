"""The engine's contract: threads, statistics that belong to one model, calibration data, frozen and broken
models, errors that are the caller's own."""

import copy
import threading

import pytest
import torch
import torch_pruning as tp
from conftest import CrossStage, image_batches, same_state, small_net, small_resnet, state_of

from entropy_importance import (
    CalibrationError,
    GroupFormationTimeout,
    StaleStatisticsError,
    create_importance,
    prune,
    repairs,
)
from entropy_importance.repairs import REPAIRED


def _originals():
    return [vars(owner)[name] for owner, name, _ in REPAIRED]


def _plain(model, x):
    """Plain Torch-Pruning, in place: magnitude criterion, classifier ignored."""
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    pruner.step()
    return model


def test_two_prunes_and_plain_torch_pruning_in_three_threads():
    before = _originals()
    x_csp, x_res = torch.randn(2, 3, 8, 8), torch.randn(1, 3, 32, 32)
    csp, res = CrossStage().eval(), small_resnet()  # built here: model constructors share the global RNG
    plain_copies = [copy.deepcopy(res) for _ in range(2)]
    # oracles: the same three jobs one after the other
    expected_csp = prune(csp, x_csp, "information-capacity", ratio=0.5)[0]
    expected_res = prune(res, x_res, "channel-similarity-entropy", ratio=0.5)[0]
    expected_plain = _plain(copy.deepcopy(res), x_res)
    results, errors = {}, []
    start = threading.Barrier(3)

    def job(name, fn):
        try:
            start.wait()
            for _ in range(2):  # two rounds, so that the calls overlap in more than one order
                results[name] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((name, e))

    jobs = {"csp": lambda: prune(csp, x_csp, "information-capacity", ratio=0.5)[0],
            "res": lambda: prune(res, x_res, "channel-similarity-entropy", ratio=0.5)[0],
            "plain": lambda: _plain(plain_copies.pop(), x_res)}
    threads = [threading.Thread(target=job, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert same_state(results["csp"], expected_csp.state_dict())
    assert same_state(results["res"], expected_res.state_dict())
    assert same_state(results["plain"], expected_plain.state_dict())  # plain Torch-Pruning was not affected
    assert _originals() == before


def test_plain_torch_pruning_in_another_thread_does_not_see_the_repairs():
    x = torch.randn(2, 3, 8, 8)
    failures = []
    inside, done = threading.Event(), threading.Event()

    def holder():
        with repairs():
            inside.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(30)
    try:  # repairs are installed (by the other thread) but not active here: Torch-Pruning fails as it does alone
        with pytest.raises(TypeError, match="NoneType"):
            tp.DependencyGraph().build_dependency(CrossStage().eval(), x)
    except BaseException as e:  # noqa: BLE001
        failures.append(e)
    finally:
        done.set()
        t.join()
    assert not failures
    assert tp.DependencyGraph.get_pruning_group is vars(tp.DependencyGraph)["get_pruning_group"]


def test_the_group_time_limit_works_outside_the_main_thread(monkeypatch):
    import time

    from entropy_importance.repairs import group_search

    bound = group_search._ChannelBound.__call__

    def slow_bound(self, node, fn):
        time.sleep(0.2)
        return bound(self, node, fn)

    monkeypatch.setattr(group_search._ChannelBound, "__call__", slow_bound)
    raised = []

    def job():
        model = small_net()
        with repairs(group_time_limit=0.1):
            graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
            try:
                graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1])
            except GroupFormationTimeout as e:
                raised.append(e)

    t = threading.Thread(target=job)
    t.start()
    t.join()
    assert len(raised) == 1


def test_statistics_of_another_model_are_a_staleness_error():
    model, data = small_resnet(), image_batches()
    imp = create_importance("gap-entropy").calibrate(model, data)
    other = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(other, torch.randn(1, 3, 32, 32), importance=imp, pruning_ratio=0.5,
                                  ignored_layers=[other.fc])
    state = state_of(other)
    with pytest.raises(StaleStatisticsError, match="collected on another model"):
        pruner.step()
    assert same_state(other, state)
    imp.bind(other)  # the documented way to use them on an identical copy
    tp.pruner.MetaPruner(other, torch.randn(1, 3, 32, 32), importance=imp, pruning_ratio=0.5,
                         ignored_layers=[other.fc]).step()
    assert other.layer1[0].conv1.out_channels == 32


def test_fewer_than_two_calibration_images_is_refused_for_response_entropies():
    model = small_resnet()
    with pytest.raises(CalibrationError, match="at least 2 calibration images, got 1"):
        create_importance("gap-entropy").calibrate(model, image_batches(1, 1))
    create_importance("feature-map-entropy").calibrate(model, image_batches(1, 1))  # spatial: one image is enough


def test_a_one_shot_generator_is_kept_for_every_step():
    model, x = small_resnet(), torch.randn(1, 3, 32, 32)
    batches = image_batches(3)
    pruned, report = prune(model, x, "gap-entropy", speed_up=1.5, schedule="progressive", step_ratio=0.1,
                           calibration_data=(b for b in batches), calibration_batches=3)
    assert report.steps > 1 and report.speed_up >= 1.5
    with pytest.raises(CalibrationError, match="one-shot iterator"):
        prune(model, x, "gap-entropy", speed_up=1.5, calibration_data=(b for b in batches))


def test_a_frozen_model_is_pruned_and_stays_frozen():
    model = small_resnet()
    for p in model.parameters():
        p.requires_grad_(False)
    model.fc.weight.requires_grad_(True)  # partly frozen
    pruned, report = prune(model, torch.randn(1, 3, 32, 32), "information-capacity", ratio=0.5)
    assert pruned.layer1[0].conv1.out_channels == 32 and report.params_after < report.params_before / 2
    assert {n for n, p in pruned.named_parameters() if p.requires_grad} == {"fc.weight"}


def test_an_error_in_the_callers_loader_is_raised_as_it_is():
    class Broken:
        def __iter__(self):
            yield image_batches(1)[0]
            raise KeyError("missing file 17.jpg")

    model = small_resnet()
    with pytest.raises(KeyError, match="17.jpg"):
        prune(model, torch.randn(1, 3, 32, 32), "gap-entropy", calibration_data=Broken())


def test_a_criterion_that_fails_reports_its_own_error():
    class Failing(tp.importance.GroupMagnitudeImportance):
        def __call__(self, group, **kwargs):
            raise ArithmeticError("my criterion cannot score this")

    with pytest.raises(ArithmeticError, match="my criterion cannot score this"):
        prune(small_resnet(), torch.randn(1, 3, 32, 32), Failing(), ratio=0.5)


@pytest.mark.parametrize("criterion", ["information-capacity", "gap-entropy"])
def test_nan_weights_are_one_clear_error_for_every_criterion(criterion):
    model = small_resnet()
    with torch.no_grad():
        model.layer2[0].conv1.weight[3, 0, 0, 0] = float("nan")
    state = state_of(model)
    with pytest.raises(ValueError, match=r"parameter 'layer2.0.conv1.weight' has NaN or Inf"):
        prune(model, torch.randn(1, 3, 32, 32), criterion, calibration_data=image_batches())
    assert all(torch.equal(v, state[k]) or torch.isnan(v).any() for k, v in model.state_dict().items())


def test_max_steps_does_not_set_the_step_size():
    model, x = small_resnet(), torch.randn(1, 3, 32, 32)
    a = prune(model, x, "information-capacity", speed_up=1.5, schedule="progressive", step_ratio=0.05,
              max_steps=50)[1]
    b = prune(model, x, "information-capacity", speed_up=1.5, schedule="progressive", step_ratio=0.05,
              max_steps=200)[1]
    assert a.steps == b.steps and a.macs_after == b.macs_after
