"""The fast estimators against independent oracles: binned kernel entropy vs the exact O(C^2) sums in numpy,
tiled Euclidean distance sums vs scipy's float64 cdist, feature-map entropy vs numpy histograms (exact path) and
vs the exact path (sampled positions)."""

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
import torch.nn as nn

from entropy_importance import (
    ChannelSimilarityEntropyImportance,
    FeatureMapEntropyImportance,
    InformationCapacityImportance,
)
from entropy_importance.calibration.statistics import MapEntropySum
from entropy_importance.criteria.channel_similarity import _binned_log_sums, _kernel_entropy, _silverman
from entropy_importance.criteria.channels import ChannelView
from entropy_importance.criteria.information_capacity import _euclidean_distance_sums
from entropy_importance.data import fashion_mnist, find_fashion_mnist

WIDTHS = [3, 16, 64, 512, 2048]


# ---------------------------------------------------------------------------------------------- kernel entropy
def _kernel_oracle(x: np.ndarray, tau: float) -> np.ndarray:
    """``-mean_a log mean_b exp(-(x_a - x_b)^2 / (2 tau^2))`` per row, float64, all pairs."""
    out = []
    for row in np.asarray(x, dtype=np.float64):
        d2 = (row[:, None] - row[None, :]) ** 2
        out.append(-np.log(np.exp(-d2 / (2 * tau * tau)).mean(1)).mean())
    return np.array(out)


def _random_rows(rows: int, c: int, seed: int) -> torch.Tensor:
    """Rows of different spread, half Gaussian, half heavy-tailed (Student t, 3 dof)."""
    g = np.random.default_rng(seed)
    scale = np.exp(g.normal(0, 0.6, size=(rows, 1)))
    x = np.where(np.arange(rows)[:, None] % 2 == 0, g.standard_t(3, size=(rows, c)), g.normal(size=(rows, c)))
    return torch.from_numpy((x * scale).astype(np.float32))


def _init_rows(c: int, seed: int) -> torch.Tensor:
    """Mean-compressed filters of a freshly initialised conv layer (PyTorch's default init) with ``c`` inputs."""
    torch.manual_seed(seed)
    return nn.Conv2d(c, 24, 3).weight.detach().mean((2, 3))


def _grid_entropy(x: torch.Tensor, tau: float) -> torch.Tensor:
    """The binned estimator with its grid forced at every width (the default sums short rows exactly)."""
    return math.log(x.shape[1]) - _binned_log_sums(x, tau, fallback=False)


def _check_kernel(fast: np.ndarray, exact: np.ndarray, atol: float) -> None:
    assert np.abs(fast - exact).max() <= atol
    if np.ptp(exact) > 0:
        assert scipy.stats.spearmanr(fast, exact).statistic > 0.99


@pytest.mark.parametrize("c", WIDTHS)
@pytest.mark.parametrize("source", ["random", "init"])
def test_binned_kernel_entropy_tracks_the_exact_sums(c, source):
    x = _random_rows(24 if c < 2048 else 12, c, seed=c) if source == "random" else _init_rows(c, seed=c)
    x = x[:12] if c == 2048 else x
    tau = _silverman(x)
    exact = _kernel_oracle(x.numpy(), tau)
    # the grid itself, at every width: 1e-2 below 32 values per row, 2e-3 above (the docs give measured errors)
    _check_kernel(_grid_entropy(x, tau).numpy(), exact, atol=1e-2 if c < 32 else 2e-3)
    # the default estimator: exact sums up to 64 values per row, the grid above
    _check_kernel(_kernel_entropy(x, tau).numpy(), exact, atol=1e-5 if c <= 64 else 2e-3)


def test_binned_kernel_entropy_on_briefly_trained_filters():
    """A small CNN trained for a few dozen steps on Fashion-MNIST: both directions of each conv layer."""
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST not installed")
    x, y = fashion_mnist("train", limit=1024, size=28).tensors
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 64, 3, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for step in range(32):
        batch = slice(step * 32, step * 32 + 32)
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for conv in (net[0], net[2]):
        w = conv.weight.detach().mean((2, 3))
        for rows in (w, w.t().contiguous()):  # out-channel filters, then in-channel kernels
            tau = _silverman(rows)
            exact = _kernel_oracle(rows.numpy(), tau)
            _check_kernel(_grid_entropy(rows, tau).numpy(), exact, atol=1e-2 if rows.shape[1] < 32 else 2e-3)


def test_kernel_entropy_of_identical_channels_is_zero_on_the_grid():
    x = torch.randn(4, 200)
    x[1] = 0.25
    h = _kernel_entropy(x, _silverman(x))  # 200 values per row: the grid
    assert h[1] == 0 and (h[[0, 2, 3]] > 1).all()


def test_rows_spread_over_many_bandwidths_are_summed_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 100, generator=g)
    x[:, :3] *= 1e4  # outliers: a grid of step tau / 4 over this span would cost more than the pairs
    tau = 0.05
    np.testing.assert_allclose(_kernel_entropy(x, tau).numpy(), _kernel_oracle(x.numpy(), tau), atol=1e-5)


def test_kde_option_and_channel_scores():
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 40, 3)  # 128 channels per filter: the binned path
    view = ChannelView(conv, "conv_out", conv.weight.detach().flatten(2))
    oracle = _kernel_oracle(conv.weight.detach().mean((2, 3)).numpy(), 0.01)
    exact = ChannelSimilarityEntropyImportance(kde="exact", bandwidth=0.01)
    np.testing.assert_allclose(exact.layer_scores(view).numpy(), oracle, atol=1e-5)
    binned = ChannelSimilarityEntropyImportance()
    assert binned.kde == "binned"
    index = torch.tensor([3, 17, 0, 39])
    np.testing.assert_allclose(binned.channel_scores(view, index).numpy(),
                               binned.layer_scores(view)[index].numpy(), atol=1e-5)
    with pytest.raises(ValueError):
        ChannelSimilarityEntropyImportance(kde="fft")


# ------------------------------------------------------------------------------------- information independence
def _rows_for_distances(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g) * torch.exp(torch.randn(n, 1, generator=g)) + 5.0  # far from the origin
    if n > 12:
        w[7] = w[3]  # a duplicated filter
        w[11] = w[12] + 1e-4  # a near-duplicate
    return w


@pytest.mark.parametrize("n, d", [(5, 7), (700, 50), (300, 1152)])
def test_euclidean_distance_sums_match_scipy(n, d, monkeypatch):
    monkeypatch.setattr(torch, "cdist", None)  # the N x N distance matrix is never asked for
    w = _rows_for_distances(n, d, seed=n)
    w64 = w.double().numpy()
    oracle = scipy.spatial.distance.cdist(w64, w64).sum(1)
    np.testing.assert_allclose(_euclidean_distance_sums(w).double().numpy(), oracle, rtol=1e-5)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: max(2, n // 3)]
    oracle = scipy.spatial.distance.cdist(w64, w64[index.numpy()]).sum(1)
    np.testing.assert_allclose(_euclidean_distance_sums(w, index).double().numpy(), oracle, rtol=1e-5)


def test_independence_is_the_mean_distance_to_the_others():
    w = _rows_for_distances(600, 30, seed=2)
    w64 = w.double().numpy()
    exact = InformationCapacityImportance(independence_samples=None).independence_of(w).double().numpy()
    np.testing.assert_allclose(exact, scipy.spatial.distance.cdist(w64, w64).sum(1) / 599, rtol=1e-5)
    subset = InformationCapacityImportance(independence_samples=200).independence_of(w)
    assert scipy.stats.spearmanr(subset.numpy(), exact).statistic > 0.99


# --------------------------------------------------------------------------------------- feature-map entropy
def _map_entropy_oracle(act: np.ndarray, bins: int, bin_range: str) -> np.ndarray:
    """Sum over images of each map's histogram entropy, numpy histograms and scipy entropies."""
    b, c, _ = act.shape
    total = np.zeros(c)
    for i in range(b):
        for j in range(c):
            lo, hi = (act[i].min(), act[i].max()) if bin_range == "layer" else (act[i, j].min(), act[i, j].max())
            counts = np.histogram(act[i, j], bins=bins, range=(lo, hi))[0] if hi > lo else np.array([act.shape[2]])
            total[j] += scipy.stats.entropy(counts)
    return total


@pytest.mark.parametrize("bin_range", ["layer", "map"])
@pytest.mark.parametrize("layout", ["maps", "tokens"])
def test_exact_map_entropy_matches_numpy(bin_range, layout):
    g = torch.Generator().manual_seed(0)
    act = torch.randn(6, 5, 90, generator=g) * torch.linspace(0.1, 2, 5).view(1, 5, 1)
    act[2, 1] = 0.7  # a flat map
    if layout == "tokens":  # (batch, positions, channels) in memory, seen as (batch, channels, positions)
        act = act.transpose(1, 2).contiguous().transpose(1, 2)
    stat = MapEntropySum(5, 16, bin_range, samples=None)
    stat.update(act, None)
    np.testing.assert_allclose(stat.total.numpy(), _map_entropy_oracle(act.numpy(), 16, bin_range), atol=1e-4)


def test_sampled_map_entropy_is_exact_on_small_maps_and_reproducible():
    act = torch.randn(8, 4, 100)
    exact, small = MapEntropySum(4, 16, "layer"), MapEntropySum(4, 16, "layer", samples=100)
    exact.update(act, None)
    small.update(act, None)
    assert torch.equal(exact.total, small.total)
    big = torch.randn(8, 4, 1000)
    one, two = MapEntropySum(4, 16, "layer", samples=64), MapEntropySum(4, 16, "layer", samples=64)
    one.update(big, None)
    two.update(big.transpose(1, 2).contiguous().transpose(1, 2), None)  # token layout: same positions drawn
    torch.testing.assert_close(one.total, two.total)


def test_sampled_map_entropy_removes_the_small_sample_bias():
    """iid maps: the plug-in entropy of 64 of 1024 values is biased low by about (m - 1) / 128 (0.12 for 16 bins);
    the Miller-Madow shift brings it back to the 1024-value plug-in's mean."""
    act = torch.rand(512, 2, 1024, generator=torch.Generator().manual_seed(3))
    exact, sampled = MapEntropySum(2, 16, "layer"), MapEntropySum(2, 16, "layer", samples=64)
    exact.update(act, None)
    sampled.update(act, None)
    assert (exact.mean() - sampled.mean()).abs().max() < 0.015


def test_sampled_map_entropy_keeps_the_ranking_on_real_images():
    """Fashion-MNIST through a small random CNN (28x28 maps, 784 positions, 128 sampled per image)."""
    if find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST not installed")
    x, y = fashion_mnist("train", limit=512, size=28).tensors
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    exact = FeatureMapEntropyImportance(samples=None).calibrate(net, batches, progress=False)
    sampled = FeatureMapEntropyImportance().calibrate(net, batches, progress=False)
    assert sampled.samples is not None
    for layer in ("0", "3"):  # the two conv layers (the classifier's output has one position per map)
        rho = scipy.stats.spearmanr(exact._stats[layer].mean().numpy(), sampled._stats[layer].mean().numpy())
        assert rho.statistic > 0.99


@pytest.mark.parametrize("samples", [1, 0, 2.5, "all"])
def test_bad_samples(samples):
    with pytest.raises(ValueError):
        FeatureMapEntropyImportance(samples=samples)
