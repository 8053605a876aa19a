"""Statistics of ``benchmarks.quality``: mean and spread over seeds, paired differences with Student-t intervals,
and the verdicts the report states. Pure functions of the result rows; nothing is measured here."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["t_quantile", "t_cdf", "Interval", "paired_interval", "mean_std", "Cell", "cells", "Comparison",
           "comparisons", "RANDOM"]

RANDOM = "tp-random"


def _t_pdf(x: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: float, intervals: int = 4000) -> float:
    """Student's t distribution function with ``df`` degrees of freedom: 1/2 plus the density integrated from 0
    to ``|x|`` by Simpson's rule on ``intervals`` sub-intervals, after the substitution ``x = tan(u)`` (which maps
    the heavy tail onto a bounded, smooth integrand)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if x == 0:
        return 0.5
    top = math.atan(abs(x))
    h = top / intervals
    total = 0.0
    for i in range(intervals + 1):
        u = i * h
        f = _t_pdf(math.tan(u), df) / math.cos(u) ** 2
        total += f * (1 if i in (0, intervals) else 4 if i % 2 else 2)
    area = total * h / 3
    return 0.5 + area if x > 0 else 0.5 - area


@lru_cache(maxsize=64)
def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class Interval:
    """A mean difference over ``n`` pairs with its two-sided ``level`` interval (``None`` bounds: fewer than two
    pairs, no interval)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def verdict(self) -> str:
        """"better" / "worse" when the interval excludes zero, "tie" when it does not, "n/a" without one."""
        if self.low is None or self.high is None:
            return "n/a"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "tie"


def paired_interval(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """The mean of ``a[i] - b[i]`` with its Student-t interval (``n - 1`` degrees of freedom)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired samples must be non-empty and of equal length")
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(d)
    if len(d) < 2:
        return Interval(mean, None, None, len(d))
    half = t_quantile(0.5 + level / 2, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return Interval(mean, mean - half, mean + half, len(d))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Cell:
    """One method in one setting (arch, mode, target, regime): top-1 per base seed and the mean structure."""

    arch: str
    mode: str
    target: float
    regime: str
    method: str
    top1: dict[int, float]
    macs_ratio: float
    params_ratio: float
    stale: bool  # some row came from another code version
    val: dict[int, float] | None = None  # validation top-1 per seed, where every row has it


def cells(rows: list[dict], current_code: str | None = None) -> dict[tuple, dict[str, Cell]]:
    """``{(arch, mode, target, regime): {method: Cell}}`` of the cell rows without an error."""
    grouped: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("kind") != "cell" or r.get("top1") is None:
            continue
        grouped[(r["arch"], r["mode"], r["target"], r["regime"])][r["method"]].append(r)
    out: dict[tuple, dict[str, Cell]] = {}
    for key, methods in grouped.items():
        out[key] = {}
        for method, rs in methods.items():
            val = {r["seed"]: r["val_top1"] for r in rs} if all(r.get("val_top1") is not None for r in rs) else None
            out[key][method] = Cell(*key, method, {r["seed"]: r["top1"] for r in rs},
                                    statistics.fmean(r["macs_ratio"] for r in rs),
                                    statistics.fmean(r["params_ratio"] for r in rs),
                                    current_code is not None and any(r.get("code") != current_code for r in rs), val)
    return out


@dataclass(frozen=True)
class Comparison:
    """A method against the best Torch-Pruning built-in of its setting (``reference``, random excluded) and
    against random selection, paired by base seed."""

    key: tuple
    method: str
    reference: str | None
    vs_reference: Interval | None
    vs_random: Interval | None


def _paired(a: Cell, b: Cell) -> Interval | None:
    seeds = sorted(set(a.top1) & set(b.top1))
    return paired_interval([a.top1[s] for s in seeds], [b.top1[s] for s in seeds]) if seeds else None


def best_builtin(methods: dict[str, Cell], builtins: set[str]) -> str | None:
    """The built-in (random excluded) with the highest mean validation top-1 over seeds (test top-1 only where a
    candidate has no validation numbers); ties go to the first name. Choosing it on the validation split keeps the
    test set out of the choice that the test-set differences are then measured against."""
    candidates = sorted(m for m in methods if m in builtins and m != RANDOM)
    if not candidates:
        return None
    by_val = all(methods[m].val is not None for m in candidates)
    return max(candidates, key=lambda m: statistics.fmean((methods[m].val if by_val else methods[m].top1).values()))


def comparisons(table: dict[tuple, dict[str, Cell]], builtins: set[str]) -> list[Comparison]:
    """Every method of every setting against the setting's best built-in and against random."""
    out = []
    for key in sorted(table):
        methods = table[key]
        ref = best_builtin(methods, builtins)
        rnd = methods.get(RANDOM)
        for name in sorted(methods):
            cell = methods[name]
            vs_ref = _paired(cell, methods[ref]) if ref is not None and name != ref else None
            vs_rnd = _paired(cell, rnd) if rnd is not None and name != RANDOM else None
            out.append(Comparison(key, name, ref, vs_ref, vs_rnd))
    return out
