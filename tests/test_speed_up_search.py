"""The speed-up search of ``prune(speed_up=...)`` (``Engine.search_ratio``) on planted ratio -> speed-up curves: a
curve that bends as sharply as global LAMP's on a trained ResNet-20 (where the secant crept along the low end and
the search returned 130x for a 2x target) and a curve that jumps (the target cannot be met within the tolerance)."""

import warnings

import numpy as np
import pytest

from entropy_importance.engine import Engine

MACS = 1_000_000.0
#: measured on the quality benchmark's resnet20 seed-1 base, global tp-lamp (ratio -> MAC speed-up), except that
#: 0.52 / 0.521 straddle 2.0 as the measured 0.52 (2.000, just short) did
LAMP = [(0.0, 1.0), (0.5, 1.937), (0.508, 1.973), (0.511, 1.982), (0.516, 1.998), (0.519, 1.9995), (0.52, 1.9999),
        (0.521, 2.002), (0.55, 2.266), (0.6, 2.731), (0.7, 4.658), (0.8, 10.351), (0.9, 44.275), (0.95, 130.073)]


class PlantedEngine:
    """What ``search_ratio`` reads of an engine: ``macs_before``, ``one_shot(r)`` and ``measured(work)``; the
    'pruned model' of a probe is its ratio, its MACs come from the planted curve."""

    def __init__(self, speed_up_at):
        self.macs_before, self.speed_up_at, self.probes = MACS, speed_up_at, []

    def one_shot(self, r):
        self.probes.append(r)
        return r, None

    def measured(self, work):
        return (MACS / self.speed_up_at(work),)


def search(curve, target):
    return Engine.search_ratio(curve, target)


def test_a_sharply_bending_curve_is_searched_to_the_tolerance():
    xs, ys = zip(*LAMP, strict=True)
    engine = PlantedEngine(lambda r: float(np.interp(r, xs, ys)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reachable within the tolerance: no warning
        ratio, work, _ = search(engine, 2.0)
    reached = engine.speed_up_at(ratio)
    assert 2.0 <= reached <= 2.0 * 1.05, (ratio, reached, engine.probes)
    assert work == ratio and 0.52 < ratio < 0.53
    assert len(engine.probes) <= 2 + 6 + 12  # the first bracket, the secant probes, the bisections


def test_a_jump_past_the_tolerance_is_a_warning_and_the_closest_ratio_above():
    engine = PlantedEngine(lambda r: 1 + 1.5 * r if r < 0.6 else 3.5 + r)  # 1.8985x at 0.599, 4.1x at 0.6
    with pytest.warns(UserWarning, match=r"speed-up 2.0 overshot: .* 0\.6, gives 4\.10x \(1\.90x at ratio 0\.599\)"):
        ratio, _, _ = search(engine, 2.0)
    assert ratio == pytest.approx(0.6)


def test_a_smooth_curve_needs_few_probes():
    engine = PlantedEngine(lambda r: 1 / (1 - r) ** 2)  # sqrt(MACs) linear in the ratio: the secant is exact
    ratio, _, _ = search(engine, 3.0)
    assert ratio == pytest.approx(1 - 1 / np.sqrt(3), abs=1.5e-3) and len(engine.probes) <= 3
