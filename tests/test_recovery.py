"""Recovery without training (``recover()``): oracles, the engine's and pipelines' use of it, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

import entropy_importance as ei
from entropy_importance.recovery import NormalEquations, recover
from entropy_importance.recovery.samples import LayerRows


def _linear_1x1_net(hidden: int = 16) -> nn.Module:
    """A network that is affine end to end (1x1 convs, BatchNorm in eval mode, no activation), with bias-free convs
    followed by BatchNorm: pruned hidden channels are affine functions of the kept ones."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
        nn.Conv2d(hidden, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, 12, 1), nn.Flatten(), nn.Linear(12 * 4 * 4, 5),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    return net.eval()


def _data(n_batches: int = 4, batch: int = 32, shape=(3, 4, 4), seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=g) for _ in range(n_batches)]


def test_an_affine_network_is_reconstructed_exactly():
    """Oracle: the unpruned network. Every removed channel of an affine network is an affine function of the kept
    ones (16 channels carry a 3-dimensional signal), so reconstruction must give back the original output."""
    net = _linear_1x1_net()
    data = _data()
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.5)
    held = torch.randn(64, 3, 4, 4)
    with torch.no_grad():
        ref = net(held)
        raw_error = float((pruned(held) - ref).norm() / ref.norm())
    assert raw_error > 0.05  # pruning broke it
    fixed, report = recover(net, pruned, data, "reconstruct", ridge=1e-9)
    with torch.no_grad():
        error = float((fixed(held) - ref).norm() / ref.norm())
    assert error < 1e-4, (raw_error, error, str(report))
    assert {r.name for r in report.refitted} >= {"2", "4"}


def test_the_batchnorm_intercept_is_what_makes_a_bias_free_layer_exact():
    """Planted: 4 hidden channels carrying a 3-dimensional affine signal, pruned to 3. A removed channel is an affine
    function of the kept ones with a constant term, which the bias-free conv "2" can only reproduce through the
    intercept folded into the BatchNorm after it (the conv with a bias after them absorbs the constant either way)."""
    net = _linear_1x1_net(hidden=4)
    data = _data()
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.25)
    assert pruned[0].out_channels == 3
    errors = {}
    for intercept in (True, False):
        _, report = recover(net, pruned, data, "reconstruct", ridge=1e-9, intercept=intercept)
        errors[intercept] = next(r.error_after for r in report.layers if r.name == "2")
    assert errors[True] < 1e-8 and errors[False] > 1e-4, errors


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [
    (3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 1, 2, 2, 1), (3, 1, 1, 1, 4), (3, 2, 0, 1, 8), (1, 1, 0, 1, 1),
    (3, 1, "same", 1, 1)])
def test_conv_rows_times_weights_are_the_convolution(kernel, stride, padding, dilation, groups):
    """Oracle: F.conv2d. Every input row times the layer's weights (bias as the intercept column) is the conv's
    output at that position."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups)
    x = torch.randn(2, 8, 11, 9)
    y = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation, groups)
    rows = LayerRows(conv, positions=10_000, intercept=True)
    xs = rows.input_rows(x, None, tuple(y.shape[2:]))
    ys = rows.output_rows(y, None, None)
    predicted = torch.einsum("ngd,god->ngo", xs.double(), rows.weights())
    torch.testing.assert_close(predicted.float(), ys, atol=1e-4, rtol=1e-4)
    # sampled positions pick the same rows from both
    idx = rows.sample(y, torch.Generator().manual_seed(0)) if y.shape[2] * y.shape[3] > 7 else None
    rows.positions = 7
    idx = rows.sample(y, torch.Generator().manual_seed(0))
    if idx is not None:
        xs, ys = rows.input_rows(x, idx, tuple(y.shape[2:])), rows.output_rows(y, idx, None)
        torch.testing.assert_close(torch.einsum("ngd,god->ngo", xs.double(), rows.weights()).float(), ys,
                                   atol=1e-4, rtol=1e-4)


def test_normal_equations_agree_with_numpy_ridge_and_never_increase_the_loss():
    """Oracle: numpy's closed-form ridge regression towards W0, and the loss computed directly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2, 7))
    y = rng.normal(size=(300, 2, 3))
    w0 = rng.normal(size=(2, 3, 7))
    eq = NormalEquations(2, 7, 3)
    for chunk in np.array_split(np.arange(300), 4):
        eq.add(torch.from_numpy(x[chunk]).float(), torch.from_numpy(y[chunk]).float())
    w = eq.solve(torch.from_numpy(w0), 0.1).numpy()
    xf, yf = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    for j in range(2):
        g = xf[:, j].T @ xf[:, j]
        lam = 0.1 * np.trace(g) / 7
        expected = np.linalg.solve(g + lam * np.eye(7), xf[:, j].T @ yf[:, j] + lam * w0[j].T).T
        np.testing.assert_allclose(w[j], expected, rtol=1e-8, atol=1e-8)

    def loss(weights):
        return sum(np.square(xf[:, j] @ weights[j].T - yf[:, j]).sum() for j in range(2))

    assert eq.error(torch.from_numpy(w0)) == pytest.approx(loss(w0), rel=1e-9)
    assert loss(w) <= loss(w0)
    for ridge in (1e-6, 1.0, 1e3):
        assert loss(eq.solve(torch.from_numpy(w0), ridge).numpy()) <= loss(w0) + 1e-9


def _small_resnet() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=10).eval()


def test_layer_errors_on_a_residual_network_fall_and_the_output_gets_closer():
    net = _small_resnet()
    data = _data(4, 16, (3, 32, 32))
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.4)
    fixed, report = recover(net, pruned, data, "reconstruct")
    assert report.refitted
    for layer in report.refitted:
        assert layer.error_after <= layer.error_before
    held = torch.randn(32, 3, 32, 32)
    with torch.no_grad():
        ref = net(held)
        before = float((pruned(held) - ref).norm() / ref.norm())
        after = float((fixed(held) - ref).norm() / ref.norm())
    assert after < before


def test_the_models_passed_in_are_not_changed_and_the_result_saves_and_loads(tmp_path):
    net = _small_resnet()
    net.train()
    data = _data(3, 8, (3, 32, 32))
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3)
    pruned.train()
    net_state = copy.deepcopy(net.state_dict())
    pruned_state = copy.deepcopy(pruned.state_dict())
    fixed, _ = recover(net, pruned, data, "reconstruct+bn")
    for before, model in ((net_state, net), (pruned_state, pruned)):
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert net.training and pruned.training and fixed.training  # modes as they were
    assert not any(m._forward_hooks for m in net.modules()) and not any(m._forward_hooks for m in pruned.modules())
    assert fixed is not pruned
    path = tmp_path / "fixed.pt"
    ei.save_pruned(path, fixed.eval())
    loaded = ei.load_pruned(path, base_model=_small_resnet())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fixed(x))


def test_bn_reestimates_the_statistics_of_the_calibration_data_and_restores_modes():
    """Oracle: the mean and unbiased variance of the first BatchNorm's input (F.conv2d of the data), averaged over
    the batches as BatchNorm with momentum=None does."""
    net = _linear_1x1_net().train()
    data = _data(3, 16)
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.25)
    pruned.train()
    fixed, report = recover(net, pruned, data, "bn")
    assert report.batchnorm_layers == 2 and fixed.training and all(m.training for m in fixed.modules())
    conv, bn = fixed[0], fixed[1]
    feats = [F.conv2d(x, conv.weight.detach()).transpose(0, 1).reshape(conv.out_channels, -1).double().numpy()
             for x in data]
    mean = np.mean([f.mean(axis=1) for f in feats], axis=0)
    var = np.mean([f.var(axis=1, ddof=1) for f in feats], axis=0)
    np.testing.assert_allclose(bn.running_mean.double().numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var.double().numpy(), var, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1


def test_after_a_plain_torch_pruning_pipeline_with_its_history():
    net = _small_resnet()
    data = _data(3, 16, (3, 32, 32))
    model = copy.deepcopy(net)
    pruner = tp.pruner.MetaPruner(model, data[0][:1], importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.3, ignored_layers=[model.fc])
    pruner.step()
    with pytest.raises(ValueError, match="history=pruner.pruning_history"):
        recover(net, model, data)
    fixed, report = recover(net, model, data, history=pruner)
    assert report.refitted
    held = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = net(held)
        assert (fixed(held) - ref).norm() < (model(held) - ref).norm()


def test_prune_recovers_and_reports_it():
    net = _small_resnet()
    data = _data(3, 16, (3, 32, 32))
    with pytest.raises(ValueError, match="needs calibration_data"):
        ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3, recover="reconstruct")
    with pytest.raises(ValueError, match="recover method must be one of"):
        ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3, recover="retrain", calibration_data=data)
    pruned, report = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3, calibration_data=data,
                              recover="reconstruct")
    assert report.recovery is not None and report.recovery.refitted and report.recovery.seconds > 0
    assert report.to_dict()["recovery"]["method"] == "reconstruct"
    plain, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3)
    held = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = net(held)
        assert (pruned(held) - ref).norm() < (plain(held) - ref).norm()


def test_a_pipeline_with_bn_recovery_ends_with_statistics_of_its_current_weights():
    """After every stage the BatchNorm statistics are re-estimated: re-estimating them again on the same data
    must change nothing."""
    net = _small_resnet()
    data = _data(2, 16, (3, 32, 32))
    model, report = ei.create_pipeline("luo-wu", importance="tp-magnitude-l2", layers=["layer1.*", "layer2.*"]).run(
        net, data[0][:1], calibration_data=data, ratio=0.3, recover="bn")
    stages = [s for s in report.stages if s.pruned]
    assert stages and all(s.recovery and s.recovery["batchnorm_layers"] > 0 for s in stages)
    again, _ = recover(net, model, data, "bn")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        if "running" in name:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_one_clear_error_and_changes_nothing():
    net = _small_resnet()
    data = _data(2, 8, (3, 32, 32))
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3)
    state = copy.deepcopy(pruned.state_dict())
    with pytest.raises(ValueError, match="calibration batch 0 does not run through the original model"):
        recover(net, pruned, [torch.randn(4, 1, 32, 32)])
    with pytest.raises(ValueError, match="yielded no batches"):
        recover(net, pruned, [])
    with pytest.raises(ValueError, match="needs calibration data"):
        recover(net, pruned, None)
    with pytest.raises(ValueError, match="recover method must be one of"):
        recover(net, pruned, data, "fine-tune")
    with pytest.raises(ValueError, match="not the same architecture"):
        recover(_linear_1x1_net(), pruned, data)
    other, _ = ei.prune(_small_resnet(), data[0][:1], "tp-magnitude-l1", ratio=0.5)
    with pytest.raises(ValueError, match="not the original pruned by this history|pruning records differ"):
        recover(pruned, other, data)
    with pytest.raises(ValueError, match="NaN or Inf"):
        recover(net, pruned, [torch.full((8, 3, 32, 32), float("nan"))])
    with pytest.warns(UserWarning, match="nothing to recover"):
        same, report = recover(net, ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.0)[0], data)
    assert "nothing to recover" in report.note
    for key, value in pruned.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_an_interrupted_recovery_leaves_the_pruned_model_as_it_was(monkeypatch):
    net = _small_resnet()
    data = _data(2, 8, (3, 32, 32))
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3)
    state = copy.deepcopy(pruned.state_dict())
    solved = []
    original_solve = NormalEquations.solve

    def interrupting(self, *args, **kwargs):
        solved.append(1)
        if len(solved) > 12:  # several layers are written already
            raise KeyboardInterrupt
        return original_solve(self, *args, **kwargs)

    monkeypatch.setattr(NormalEquations, "solve", interrupting)
    for inplace in (False, True):
        solved.clear()
        with pytest.raises(KeyboardInterrupt):
            recover(net, pruned, data, inplace=inplace)
        for key, value in pruned.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        assert not any(m._forward_hooks for m in pruned.modules())


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name,kwargs", [("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
                                         ("mobilenetv3_small_050", {})])
def test_attention_and_depthwise_models_get_closer_to_the_unpruned_output(name, kwargs):
    import timm

    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=10, **kwargs).eval()
    data = _data(4, 32, (3, 32, 32))
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3)
    fixed, report = recover(net, pruned, data, "reconstruct")
    assert report.refitted
    held = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = net(held)
        assert (fixed(held) - ref).norm() < (pruned(held) - ref).norm()


# ------------------------------------------------------------------------------------------------ segments
class _InplaceResidual(nn.Module):
    """Children linked one to the next by tensor identity, but with ``x += shortcut`` before the last one: running
    the children in a row would drop the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()

    def forward(self, x):
        y = self.bn(self.conv(x))
        y += x
        return self.act(y)


def test_segments_follow_the_chain_and_do_not_split_an_inplace_residual_block():
    from entropy_importance.recovery.segments import find_segments, run_matches

    net = nn.Sequential(nn.Conv2d(3, 4, 1), _InplaceResidual(), _InplaceResidual(), nn.Flatten(), nn.Linear(64, 2))
    x = torch.randn(2, 3, 4, 4)
    assert find_segments(net.eval(), x) == ["0", "1", "2", "3", "4"]
    assert run_matches(net, ["0", "1", "2", "3", "4"], x)
    assert not run_matches(net, ["1.conv", "1.bn", "1.act"], x)  # the shortcut is lost when run in a row


def test_the_segment_path_gives_the_same_weights_as_whole_forward_passes(monkeypatch):
    import importlib

    module = importlib.import_module("entropy_importance.recovery.reconstruct")
    net = _small_resnet()
    data = _data(2, 8, (3, 32, 32))
    pruned, _ = ei.prune(net, data[0][:1], "tp-magnitude-l2", ratio=0.3)
    fast, _ = recover(net, pruned, data)
    monkeypatch.setattr(module, "find_segments", lambda model, inputs: [])
    slow, _ = recover(net, pruned, data)
    for (name, a), b in zip(fast.state_dict().items(), slow.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------ real data
@pytest.mark.usefixtures("fashion_mnist_dir")
def test_reconstruction_repairs_a_trained_net_on_fashion_mnist():
    """A small conv net trained for 300 steps on real Fashion-MNIST, pruned 2x in MACs: reconstruction from 512
    training images gains at least 20 points of test accuracy (2,000 test images) over the raw pruned net."""
    from entropy_importance.data import fashion_mnist

    torch.manual_seed(0)
    train = fashion_mnist("train", size=28, channels=1, limit=20_000)
    test = fashion_mnist("test", size=28, channels=1, limit=2_000)
    x, y = train.tensors
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=300)
    net.train()
    for _ in range(300):
        idx = torch.randint(len(y), (64,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()

    def accuracy(model):
        with torch.no_grad():
            return float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())

    base = accuracy(net)
    assert base > 0.7
    calibration = [x[-512:][i:i + 128] for i in range(0, 512, 128)]
    pruned, report = ei.prune(net, x[:1], "tp-magnitude-l2", speed_up=2.0)
    assert report.speed_up >= 2.0
    raw = accuracy(pruned)
    fixed, _ = recover(net, pruned, calibration, "reconstruct")
    assert accuracy(fixed) >= raw + 0.20, (base, raw, accuracy(fixed))
    assert accuracy(fixed) >= base - 0.05, (base, raw, accuracy(fixed))


def test_pipelines_recover_by_reconstruction_by_default_when_given_data():
    net = _small_resnet()
    data = _data(2, 16, (3, 32, 32))
    _, report = ei.create_pipeline("luo-wu", importance="tp-magnitude-l2", layers=["layer1.*"]).run(
        net, data[0][:1], calibration_data=data, ratio=0.3)
    stages = [s for s in report.stages if s.pruned]
    assert stages and all(s.recovery["method"] == "reconstruct" and s.recovery["refitted"] > 0 for s in stages)
    _, plain = ei.create_pipeline("fec", layers=["layer1.*"]).run(net, data[0][:1], ratio=0.3)  # data-free, no data
    assert all(s.recovery is None for s in plain.stages)


def test_a_channels_last_model_comes_back_from_prune_in_channels_last():
    net = _small_resnet().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 32)
    pruned, _ = ei.prune(net, x, "tp-magnitude-l2", ratio=0.3)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    plain, _ = ei.prune(_small_resnet(), x, "tp-magnitude-l2", ratio=0.3)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, nn.Conv2d))
