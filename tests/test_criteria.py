"""FEC and Tang criteria on hand-built layers, against numpy/scipy oracles and planted answers."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn
import torch_pruning as tp

from entropy_importance import ChannelSimilarityEntropyImportance, InformationCapacityImportance


def _conv_group(conv: nn.Conv2d, c_in: int):
    model = nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU(), nn.Conv2d(conv.out_channels, 6, 3))
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, c_in, 8, 8))
    return dg.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(conv.out_channels)))


def _planted_conv(seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(16, 6, 3)
    with torch.no_grad():
        conv.weight[2] = 0.05  # every channel alike
    return conv


def _fec_oracle(w: np.ndarray) -> np.ndarray:
    compressed = w.reshape(w.shape[0], w.shape[1], -1).mean(2)
    bins = math.ceil(math.sqrt(w.shape[1]))
    lo, hi = compressed.min(), compressed.max()
    return np.array([scipy.stats.entropy(np.histogram(row, bins=bins, range=(lo, hi))[0]) for row in compressed])


def test_fec_histogram_matches_numpy_oracle():
    conv = _planted_conv()
    imp = ChannelSimilarityEntropyImportance(construction="histogram", group_reduction="first", normalizer=None,
                                             tie_break=False)
    scores = imp(_conv_group(conv, 16)).numpy()
    np.testing.assert_allclose(scores, _fec_oracle(conv.weight.detach().numpy()), atol=1e-5)


@pytest.mark.parametrize("construction", ["histogram", "kernel"])
def test_fec_filter_with_alike_channels_ranks_lowest(construction):
    conv = _planted_conv()
    scores = ChannelSimilarityEntropyImportance(construction=construction)(_conv_group(conv, 16))
    assert scores.argmin().item() == 2
    assert (scores[torch.arange(6) != 2] > scores[2]).all()


def test_fec_kernel_matches_direct_formula():
    conv = _planted_conv(1)
    imp = ChannelSimilarityEntropyImportance(
        construction="kernel", bandwidth=0.02, group_reduction="first", normalizer=None, tie_break=False
    )
    scores = imp(_conv_group(conv, 16)).numpy()
    m = conv.weight.detach().double().numpy().reshape(6, 16, 9).mean(2)
    for i in range(6):
        d2 = (m[i][:, None] - m[i][None, :]) ** 2
        f = np.exp(-d2 / (2 * 0.02**2)).mean(1)
        assert scores[i] == pytest.approx(-np.log(f).mean(), abs=1e-4)


def test_fec_kernel_on_wide_layers_tracks_the_exact_estimate():
    """Filters with 2048 channels use 256 order statistics: compare with the exact O(C^2) numpy estimate."""
    from entropy_importance.criteria.channel_similarity import _kernel_entropy

    g = np.random.default_rng(0)
    scale = np.exp(g.normal(0, 0.6, size=(40, 1)))          # filters of different spread
    heavy = g.standard_t(df=3, size=(40, 2048))              # and non-Gaussian shapes
    x = (np.where(np.arange(40)[:, None] % 2 == 0, heavy, g.normal(size=(40, 2048))) * scale).astype(np.float32)
    tau = 1.06 * float(x.std()) * 2048 ** (-0.2)
    exact = np.array([-np.log(np.exp(-(r[:, None] - r[None, :]) ** 2 / (2 * tau * tau)).mean(1)).mean()
                      for r in x.astype(np.float64)])
    approx = _kernel_entropy(torch.from_numpy(x), None).numpy()
    assert np.abs(approx - exact).max() < 0.02 * np.abs(exact).max()  # 16 points: 0.10, 64: 0.03
    assert scipy.stats.spearmanr(approx, exact).statistic > 0.99


def _tang_oracle(w: np.ndarray, sigma: float) -> np.ndarray:
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    bins = min(64, max(2, math.ceil(math.sqrt(flat.shape[1]))))
    lo, hi = flat.min(), flat.max()
    ic = np.array([scipy.stats.entropy(np.histogram(r, bins=bins, range=(lo, hi))[0]) for r in flat])
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    cos = np.abs(unit @ unit.T)
    n = len(flat)
    ii = np.array([np.mean([1 - cos[i, j] for j in range(n) if j != i]) for i in range(n)])

    def mm(v):
        return (v - v.min()) / (v.max() - v.min())

    return mm(ic) + sigma * mm(ii)


@pytest.mark.parametrize("sigma", [0.0, 0.5, 2.0])
def test_tang_matches_numpy_oracle(sigma):
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 7, 3)
    imp = InformationCapacityImportance(sigma=sigma, independence="cosine", group_reduction="first", normalizer=None,
                                        tie_break=False)
    scores = imp(_conv_group(conv, 8)).numpy()
    np.testing.assert_allclose(scores, _tang_oracle(conv.weight.detach().numpy(), sigma), atol=1e-4)


def test_tang_duplicated_filters_have_lowest_independence():
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 7, 3)
    with torch.no_grad():
        conv.weight[5] = -2.0 * conv.weight[1]  # |cos| = 1: the same direction
    imp = InformationCapacityImportance(capacity_weight=0.0, sigma=1.0, independence="cosine",
                                        group_reduction="first", normalizer=None)
    ii = imp(_conv_group(conv, 8))
    lowest_two = set(torch.argsort(ii)[:2].tolist())
    assert lowest_two == {1, 5}


def test_tang_independence_subsampling_estimates_the_mean():
    torch.manual_seed(5)
    # rows near one of 6 directions, cluster sizes 10..250: the true independence differs between rows
    centres = torch.randn(6, 40)
    sizes = [10, 40, 60, 90, 150, 250]
    w = torch.cat([c + 0.5 * torch.randn(k, 40) for c, k in zip(centres, sizes, strict=True)])
    exact = InformationCapacityImportance(independence="cosine", independence_samples=None).independence_of(w)
    sampled = InformationCapacityImportance(independence="cosine", independence_samples=300).independence_of(w)
    assert (sampled - exact).abs().max() < 0.03
    assert torch.corrcoef(torch.stack([exact, sampled]))[0, 1] > 0.9


@pytest.mark.parametrize(
    "kwargs",
    [{"sigma": -1}, {"sigma": 0, "capacity_weight": 0}, {"bins": 1}, {"edges": "x"}, {"independence": "l7"}],
)
def test_tang_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        InformationCapacityImportance(**kwargs)


@pytest.mark.parametrize("kwargs", [{"construction": "x"}, {"bins": 0}, {"bandwidth": 0.0}])
def test_fec_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ChannelSimilarityEntropyImportance(**kwargs)


def test_nan_weights_are_a_clear_error():
    conv = _planted_conv()
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ChannelSimilarityEntropyImportance()(_conv_group(conv, 16))


def test_ties_are_broken_by_weight_norm_without_reordering():
    torch.manual_seed(6)
    conv = nn.Conv2d(4, 5, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]).view(1, 4, 1, 1) * torch.tensor(
            [1.0, 3.0, 2.0, 0.5, 4.0]).view(5, 1, 1, 1))  # every filter constant -> FEC entropy 0 for all
    group = _conv_group(conv, 4)
    plain = ChannelSimilarityEntropyImportance(tie_break=False, normalizer=None, group_reduction="first")(group)
    assert torch.all(plain == 0)
    broken = ChannelSimilarityEntropyImportance(normalizer=None, group_reduction="first")(group)
    assert torch.argsort(broken).tolist() == [3, 0, 2, 1, 4]
