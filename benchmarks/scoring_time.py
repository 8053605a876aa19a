"""Time of a whole Torch-Pruning ``MetaPruner.step()`` with each data-free criterion vs the same step with
Torch-Pruning's ``MagnitudeImportance``, same model, same run.

    python -m benchmarks.scoring_time [--models resnet50 vit_small_patch16_224 convnext_atto] [--repeats 5]

For every model (timm, random weights, ``--input-size`` px example input) and every repeat, each criterion gets a
fresh copy of the model and a fresh ``tp.pruner.MetaPruner`` (local pruning of ``--ratio`` of the channels in one
step, the classifier ignored, ``num_heads`` of the fused-qkv attention blocks given). Only ``step()`` is timed:
building the pruner (the dependency graph) is timed apart and is the same work for every criterion. Criteria are
interleaved within a repeat, so that drifts in the speed of a shared machine hit all of them alike, and the fastest
of ``--repeats`` is kept. ``scoring`` is the part of our step spent in the criterion's own per-layer scoring
(``channel_scores``); the rest of the difference to the baseline is the shared group plumbing (channel views,
tie-breaking, reduction), which the ``floor`` row measures alone: our base class around a trivial score (each
channel's weight L2 norm). ``--clock cpu`` (default) counts the CPU seconds of this process, which other load on a
shared machine disturbs far less than wall time; with one torch thread it equals wall time on an idle machine.

``--agreement`` also compares the fast estimators with their exact forms on every layer view a pruner scores:
channel-similarity entropy ``kde="binned"`` vs ``kde="exact"`` (Spearman's rho over the first ``--rows`` filters of
each view, the bandwidth of the whole layer; the exact form costs ``C^2`` per filter) and information capacity's
Euclidean independence vs float64 ``torch.cdist`` (largest relative error).
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from importlib import metadata

import torch
import torch_pruning as tp

from entropy_importance import (
    ChannelSimilarityEntropyImportance,
    InformationCapacityImportance,
    create_importance,
    get_importance_info,
    list_importances,
)
from entropy_importance.criteria.base import ChannelScoreImportance
from entropy_importance.criteria.channel_similarity import _kernel_entropy, _silverman
from entropy_importance.criteria.channels import channel_norms, channel_view
from entropy_importance.engine import attention_num_heads, classifier_layers
from entropy_importance.models import create_model

MODELS = ("resnet50", "vit_small_patch16_224", "convnext_atto")
BASELINE = "tp MagnitudeImportance"
FLOOR = "floor: L2 norm via our base"
TARGET = 2.0
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


class NormScores(ChannelScoreImportance):
    """Our criteria's shared group plumbing (channel views, tie-breaking, reduction) around a trivial per-layer
    score, each channel's weight L2 norm: the part of a step that no per-layer estimator can remove."""

    def layer_scores(self, view):
        return channel_norms(view)


def _importance(name: str, clock, spent: list[float]):
    if name == BASELINE:
        return tp.importance.MagnitudeImportance()
    imp = NormScores() if name == FLOOR else create_importance(name)
    scores = imp.channel_scores

    def timed(view, index):  # accumulates the criterion's own scoring time
        t = clock()
        out = scores(view, index)
        spent[0] += clock() - t
        return out

    imp.channel_scores = timed
    return imp


def _one_step(base: torch.nn.Module, x: torch.Tensor, name: str, ratio: float, clock) -> tuple[float, float, float]:
    """(seconds to build the pruner, seconds of its step(), seconds of the step in ``channel_scores``)."""
    model = copy.deepcopy(base).eval()
    ignored = [m for head in classifier_layers(model) for m in head.modules()]
    spent = [0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = clock()
        pruner = tp.pruner.MetaPruner(model, x, importance=_importance(name, clock, spent), pruning_ratio=ratio,
                                      ignored_layers=ignored, num_heads=attention_num_heads(model))
        built = clock() - t
        spent[0] = 0.0
        t = clock()
        pruner.step()
        stepped = clock() - t
    return built, stepped, spent[0]


def measure(model_name: str, criteria: list[str], repeats: int, input_size: int, ratio: float, clock="cpu"
            ) -> dict[str, tuple[float, float, float]]:
    """``{criterion: (build s, step s, of which scoring s)}``, each the fastest of ``repeats``, baseline first."""
    clock = CLOCKS[clock]
    torch.manual_seed(0)
    base = create_model(f"timm:{model_name}").eval()
    x = torch.randn(1, 3, input_size, input_size)
    names = [BASELINE, FLOOR, *criteria]
    runs: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(_one_step(base, x, name, ratio, clock))
    return {n: tuple(min(r[i] for r in rs) for i in range(3)) for n, rs in runs.items()}


def agreement(model_name: str, input_size: int, rows: int) -> dict[str, float]:
    """Fast vs exact estimators on every (layer, direction) view of the model's prunable groups."""
    import numpy as np
    import scipy.stats

    torch.manual_seed(0)
    model = create_model(f"timm:{model_name}").eval()
    x = torch.randn(1, 3, input_size, input_size)
    ignored = [m for head in classifier_layers(model) for m in head.modules()]
    graph = tp.DependencyGraph().build_dependency(model, x, verbose=False)
    views, seen = [], set()
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Linear]):
        for item in group:
            view = channel_view(item.dep)
            if view is not None and (id(view.module), view.kind) not in seen:
                seen.add((id(view.module), view.kind))
                views.append(view)
    rhos, errs, binned_views, ic_err, ic_rho = [], [], 0, 0.0, 1.0
    ic = InformationCapacityImportance()
    for view in views:
        m = ChannelSimilarityEntropyImportance.compress(view)
        if m.shape[1] >= 2 and m.shape[0] >= 3:
            tau, sub = _silverman(m), m[:rows]
            fast, exact = _kernel_entropy(sub, tau, "binned"), _kernel_entropy(sub.double(), tau, "exact")
            errs.append(float((fast.double() - exact).abs().max()))
            if float(exact.max() - exact.min()) > 0:
                rhos.append(scipy.stats.spearmanr(fast.numpy(), exact.numpy()).statistic)
            binned_views += m.shape[1] > 64
        w = view.slices.flatten(1)
        if w.shape[0] >= 3 and (ic.independence_samples is None or w.shape[0] <= ic.independence_samples):
            fast = ic.independence_of(w).double()
            exact = torch.cdist(w.double(), w.double()).sum(1) / (w.shape[0] - 1)
            ic_err = max(ic_err, float(((fast - exact).abs() / exact.abs().clamp_min(1e-30)).max()))
            ic_rho = min(ic_rho, float(scipy.stats.spearmanr(fast.numpy(), exact.numpy()).statistic))
    rhos = np.array(rhos)
    return {"views": len(views), "binned views": binned_views, "kde rho min": float(rhos.min()),
            "kde rho median": float(np.median(rhos)), "kde max abs diff": max(errs),
            "independence max rel err": ic_err, "independence rho min": ic_rho}


def main(argv=None) -> dict[str, dict[str, tuple[float, float, float]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=list(MODELS), help="timm model names")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio of the one step")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    p.add_argument("--agreement", action="store_true", help="also compare the fast estimators with the exact ones")
    p.add_argument("--rows", type=int, default=64, help="filters per view in the agreement check")
    data_free = [n for n in list_importances(source="entropy-importance") if not get_importance_info(n).needs_data]
    p.add_argument("--criteria", nargs="*", default=data_free, help="data-free criteria (default: all of ours)")
    args = p.parse_args(argv)
    import timm

    print(f"torch {torch.__version__}, timm {timm.__version__}, Torch-Pruning {metadata.version('torch-pruning')}, "
          "CPU threads "
          f"{torch.get_num_threads()}, {args.input_size} px, {args.clock} clock, fastest of {args.repeats}")
    results = {}
    for model_name in args.models:
        times = measure(model_name, args.criteria, args.repeats, args.input_size, args.ratio, args.clock)
        base = times[BASELINE][1]
        print(f"\n{model_name}: MetaPruner.step(), pruning_ratio {args.ratio}")
        print(f"{'criterion':30s}{'build s':>9s}{'step s':>9s}{'scoring s':>11s}{'/ Magnitude':>13s}{'target':>9s}")
        for name, (built, stepped, scoring) in times.items():
            own = "" if name == BASELINE else f"{scoring:.3f}"
            target = "" if name in (BASELINE, FLOOR) else f"<= {TARGET:g}"
            print(f"{name:30s}{built:>9.2f}{stepped:>9.2f}{own:>11s}{stepped / base:>13.2f}{target:>9s}")
        results[model_name] = times
        if args.agreement:
            agree = agreement(model_name, args.input_size, args.rows)
            print("agreement with the exact estimators: " + ", ".join(
                f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in agree.items()))
    return results


if __name__ == "__main__":
    main()
