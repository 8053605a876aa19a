"""Entropy estimators against numpy / scipy oracles and their defining properties."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from entropy_importance import estimators as E


def _centred_samples(rng, channels, samples, bins, lo, hi):
    """Samples placed strictly inside bins (away from edges), plus the exact min and max of each channel."""
    width = (hi - lo) / bins
    k = rng.integers(0, bins, size=(channels, samples))
    x = lo[:, None] + (k + 0.5 + rng.uniform(-0.3, 0.3, size=k.shape)) * width[:, None]
    x[:, 0], x[:, 1] = lo, hi
    return x.astype(np.float32)


@pytest.mark.parametrize("bins", [1, 3, 10, 64])
def test_counts_match_numpy_histogram(bins):
    rng = np.random.default_rng(bins)
    lo = rng.uniform(-5, 0, 6)
    hi = lo + rng.uniform(0.5, 4, 6)
    x = _centred_samples(rng, 6, 500, bins, lo, hi)
    counts = E.histogram_counts(torch.from_numpy(x), bins)
    oracle = np.stack([np.histogram(row, bins=bins, range=(row.min(), row.max()))[0] for row in x])
    np.testing.assert_array_equal(counts.numpy(), oracle)
    assert counts.dtype == torch.float32


def test_entropy_matches_scipy_on_random_histograms():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(20, 17)).astype(np.float32)
    counts[3] = 0
    counts[3, 4] = 9  # a single occupied bin
    ours = E.entropy_from_counts(torch.from_numpy(counts)).numpy()
    oracle = scipy.stats.entropy(counts, axis=1)
    np.testing.assert_allclose(ours, oracle, rtol=1e-5, atol=1e-6)
    assert ours[3] == 0


def test_histogram_entropy_matches_scipy_end_to_end():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 1000)).astype(np.float32) * rng.uniform(0.1, 5, size=(8, 1))
    for edges in ("channel", "layer", "quantile"):
        lo, hi = E.bin_edges(torch.from_numpy(x), edges)
        ours = E.histogram_entropy(torch.from_numpy(x), 20, edges=edges).numpy()
        oracle = []
        for row, a, b in zip(x, lo.numpy(), hi.numpy(), strict=True):
            counts = np.histogram(np.clip(row, a, b), bins=20, range=(a, b))[0]
            oracle.append(scipy.stats.entropy(counts))
        np.testing.assert_allclose(ours, oracle, atol=2e-2)  # edge-touching values may differ by one bin


def test_hand_computed_cases():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
    h = E.histogram_entropy(x, bins=4)
    assert h[0].item() == pytest.approx(math.log(4))
    assert h[1].item() == 0.0
    # [0, 0, 0, 1] with 4 bins: the maximum lands in the last bin -> p = (3/4, 1/4)
    assert h[2].item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_maximum_goes_to_last_bin_and_outliers_are_clamped():
    x = torch.tensor([[0.0, 0.5, 1.0, 7.0, -3.0]])
    counts = E.histogram_counts(x, bins=2, lo=torch.tensor([0.0]), hi=torch.tensor([1.0]))
    assert counts.tolist() == [[2.0, 3.0]]


def test_quantile_edges_are_robust_to_one_outlier():
    x = torch.cat([torch.linspace(0, 1, 999), torch.tensor([1e6])]).unsqueeze(0)
    h_channel = E.histogram_entropy(x, 10, edges="channel")
    h_quantile = E.histogram_entropy(x, 10, edges="quantile", quantile=0.005)
    assert h_channel.item() < 0.01  # the outlier squeezes everything into the first bin
    assert h_quantile.item() > math.log(10) - 0.05


def test_layer_edges_keep_spread_differences():
    base = torch.linspace(-1, 1, 400)
    x = torch.stack([base, 0.01 * base])
    h_channel = E.histogram_entropy(x, 16, edges="channel")
    h_layer = E.histogram_entropy(x, 16, edges="layer")
    assert torch.allclose(h_channel[0], h_channel[1])  # per-channel edges are scale invariant
    assert h_layer[1] < 0.5 * h_layer[0]


def test_miller_madow_adds_occupied_bins_correction():
    counts = torch.tensor([[3.0, 1.0, 0.0, 4.0]])
    n, occupied = 8, 3
    expected = scipy.stats.entropy([3, 1, 4]) + (occupied - 1) / (2 * n)
    assert E.entropy_from_counts(counts, miller_madow=True).item() == pytest.approx(expected, rel=1e-6)


def test_conditional_entropy_matches_numpy_oracle():
    rng = np.random.default_rng(2)
    joint = rng.integers(0, 20, size=(5, 7, 4)).astype(np.float32)
    joint[1, 2] = 0  # an empty bin
    ours = E.conditional_entropy(torch.from_numpy(joint)).numpy()
    mi = E.mutual_information(torch.from_numpy(joint)).numpy()
    for c in range(5):
        n = joint[c].sum()
        h = sum(joint[c, b].sum() / n * scipy.stats.entropy(joint[c, b]) for b in range(7) if joint[c, b].sum())
        assert ours[c] == pytest.approx(h, abs=1e-5)
        assert mi[c] == pytest.approx(scipy.stats.entropy(joint[c].sum(0)) - h, abs=1e-5)


def test_joint_counts_and_label_validation():
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    joint = E.joint_class_counts(x, y, num_classes=2, bins=2, lo=torch.tensor([0.0]), hi=torch.tensor([1.0]))
    assert joint.tolist() == [[[2.0, 0.0], [0.0, 2.0]]]
    assert E.conditional_entropy(joint).item() == 0.0
    assert E.mutual_information(joint).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        E.joint_class_counts(x, torch.tensor([0, 1, 2, 0]), 2, 2, torch.tensor([0.0]), torch.tensor([1.0]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        E.histogram_entropy(torch.tensor([[0.0, bad, 1.0]]), 4)


def test_float32_for_any_input_dtype():
    x = torch.randn(3, 50, dtype=torch.float64)
    assert E.histogram_entropy(x, 5).dtype == torch.float32
    assert E.histogram_entropy(x.half(), 5).dtype == torch.float32


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite),
       st.integers(1, 16))
def test_entropy_bounds(x, bins):
    h = E.histogram_entropy(torch.from_numpy(x), bins)
    assert (h >= 0).all()
    assert (h <= math.log(min(bins, x.shape[1])) + 1e-5).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 32), st.integers(1, 20))
def test_uniform_histogram_reaches_log_m(bins, per_bin):
    # every bin centre repeated per_bin times -> uniform counts
    x = ((torch.arange(bins).float() + 0.5) / bins).repeat_interleave(per_bin).unsqueeze(0)
    h = E.histogram_entropy(x, bins, edges="channel")
    lo, hi = torch.tensor([0.0]), torch.tensor([1.0])
    h_fixed = E.entropy_from_counts(E.histogram_counts(x, bins, lo=lo, hi=hi))
    assert h_fixed.item() == pytest.approx(math.log(bins), abs=1e-5)
    assert h.item() <= math.log(bins) + 1e-5


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(2, 8), st.integers(2, 30)), elements=finite),
       st.randoms(use_true_random=False))
def test_permuting_channels_permutes_scores(x, rnd):
    perm = list(range(x.shape[0]))
    rnd.shuffle(perm)
    for edges in ("channel", "layer"):
        h = E.histogram_entropy(torch.from_numpy(x), 7, edges=edges)
        hp = E.histogram_entropy(torch.from_numpy(x[perm]), 7, edges=edges)
        assert torch.equal(hp, h[perm])


@settings(max_examples=40, deadline=None)
@given(st.floats(-1e3, 1e3, allow_nan=False, width=32), st.integers(1, 50), st.integers(1, 20))
def test_constant_channel_has_zero_entropy(value, samples, bins):
    x = torch.full((1, samples), value)
    for edges in ("channel", "layer", "quantile"):
        assert E.histogram_entropy(x, bins, edges=edges, miller_madow=True).item() == 0.0


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.just(64)), elements=finite), st.integers(1, 12))
def test_one_batch_equals_four_batches(x, bins):
    t = torch.from_numpy(x)
    lo, hi = t.amin(1), t.amax(1)
    whole = E.histogram_counts(t, bins, lo=lo, hi=hi)
    parts = sum(E.histogram_counts(chunk, bins, lo=lo, hi=hi) for chunk in t.chunk(4, dim=1))
    assert torch.equal(whole, parts)
    labels = torch.arange(64) % 3
    joint = E.joint_class_counts(t, labels, 3, bins, lo, hi)
    joint_parts = sum(
        E.joint_class_counts(c, yc, 3, bins, lo, hi) for c, yc in zip(t.chunk(4, 1), labels.chunk(4), strict=True)
    )
    assert torch.equal(joint, joint_parts)
