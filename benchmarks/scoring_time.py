"""Scoring time of each criterion / Torch-Pruning's MagnitudeImportance on the same groups, same run.

    python -m benchmarks.scoring_time [--model timm:resnet50] [--repeats 3]

Builds one dependency graph, collects every group a pruner would score (classifier ignored), then times
each criterion over all groups (median of ``--repeats``) and prints the ratio to MagnitudeImportance.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch_pruning as tp

from entropy_importance import create_importance, get_importance_info, list_importances
from entropy_importance.engine import classifier_layers
from entropy_importance.models import create_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="timm:resnet50")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    data_free = [n for n in list_importances(source="entropy-importance") if not get_importance_info(n).needs_data]
    p.add_argument("--criteria", nargs="*", default=data_free, help="data-free criteria (default: all of ours)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = create_model(args.model).eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    dg = tp.DependencyGraph().build_dependency(model, x, verbose=False)
    ignored = [m for head in classifier_layers(model) for m in head.modules()]
    groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Linear]))

    def time_it(imp) -> float:
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            for g in groups:
                imp(g)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    base = time_it(tp.importance.MagnitudeImportance())
    print(f"{args.model} @ {args.input_size}px, {len(groups)} groups, torch threads {torch.get_num_threads()}")
    print(f"{'criterion':32s}{'seconds':>10s}{'/ Magnitude':>14s}")
    print(f"{'tp MagnitudeImportance':32s}{base:>10.3f}{1.0:>14.2f}")
    for name in args.criteria:
        s = time_it(create_importance(name))
        print(f"{name:32s}{s:>10.3f}{s / base:>14.2f}")


if __name__ == "__main__":
    main()
