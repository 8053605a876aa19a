"""Calibration cost of each data-driven criterion, side by side with a plain forward and Torch-Pruning's
ActivationImportance collection, on the same batches in the same run.

    python -m benchmarks.calibration_overhead [--models resnet50 vit_small_patch16_224 convnext_atto resnet56]
        [--batches 4] [--repeats 5]

Models: timm ``resnet50``, ``vit_small_patch16_224`` and ``convnext_atto`` (random weights, 10 classes) at 224 px,
batch 16; CIFAR ResNet-56 (``recipes.cifar_models``) at 32 px, batch 128. Images are Fashion-MNIST (padded to
32 px, 3 channels; bilinearly resized to 224 px for the timm models); random images when the dataset is absent.
Methods are interleaved within each repeat (drifts in a shared machine's speed hit all of them alike), after one
warm-up, and the fastest of ``--repeats`` is kept; ratios are to the plain ``torch.no_grad()`` forward over the
same batches. ``--clock cpu`` (default) counts the CPU seconds of this process, which other load on a shared
machine disturbs far less than wall time; with one torch thread it equals wall time on an idle machine.
"""

from __future__ import annotations

import argparse
import time
from importlib import metadata

import torch
import torch.nn.functional as F
import torch_pruning as tp

from entropy_importance import FeatureMapEntropyImportance, create_importance, get_importance_info, list_importances
from entropy_importance.data import fashion_mnist, find_fashion_mnist
from entropy_importance.models import create_model
from recipes.cifar_models import resnet56

MODELS = ("resnet50", "vit_small_patch16_224", "convnext_atto", "resnet56")
TARGET = 1.25
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def data_driven_criteria() -> list[str]:
    return [n for n in list_importances(source="entropy-importance") if get_importance_info(n).needs_data]


def _batches(n_batches: int, batch: int, size: int) -> tuple[list, str]:
    n = n_batches * batch
    if find_fashion_mnist() is not None:
        x, y = fashion_mnist("train", limit=n).tensors
        source = "Fashion-MNIST"
    else:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
        source = "random images"
    if size != 32:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)], source


def _setting(name: str, resnet56_weights: str | None = None) -> tuple[torch.nn.Module, int, int]:
    """(model, batch size, input size)."""
    if name == "resnet56":
        model = resnet56(10)
        if resnet56_weights:
            model.load_state_dict(torch.load(resnet56_weights, map_location="cpu"))
        return model, 128, 32
    return create_model(f"timm:{name}", num_classes=10), 16, 224


def measure(model: torch.nn.Module, batches: list, repeats: int, criteria: list[str], clock="cpu",
            fme_samples: tuple = ()) -> dict[str, float]:
    """Fastest of ``repeats`` runs per method, methods interleaved within each repeat; ``fme_samples`` adds
    feature-map entropy with those ``samples`` (``None``: exact)."""
    clock = CLOCKS[clock]
    model.eval()

    def plain():
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def tp_activation():
        imp = tp.pruner.importance.ActivationImportance()
        with torch.no_grad(), imp.compute_importance(model):
            for x, _ in batches:
                model(x)

    methods = {"plain forward": plain, "tp ActivationImportance": tp_activation}
    for crit in criteria:
        imp = create_importance(crit)
        methods[crit] = lambda imp=imp: imp.calibrate(model, batches, progress=False)
    for samples in fme_samples:
        imp = FeatureMapEntropyImportance(samples=samples)
        methods[f"  samples={samples}"] = lambda imp=imp: imp.calibrate(model, batches, progress=False)
    runs: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in methods.items():
            t = clock()
            fn()
            runs[key].append(clock() - t)
    return {k: min(v) for k, v in runs.items()}


def agreement(model: torch.nn.Module, batches: list) -> dict[str, float]:
    """Feature-map entropy as calibrated by default vs exact, on the same batches."""
    import numpy as np
    import scipy.stats

    fast = FeatureMapEntropyImportance().calibrate(model, batches, progress=False)
    exact = FeatureMapEntropyImportance(samples=None).calibrate(model, batches, progress=False)
    rhos, all_fast, all_exact = [], [], []
    for name, stat in exact._stats.items():
        e, f = stat.mean(), fast._stats[name].mean()
        all_fast.append(f)
        all_exact.append(e)
        if e.numel() >= 3 and float(e.max() - e.min()) > 0:
            rhos.append(scipy.stats.spearmanr(f.numpy(), e.numpy()).statistic)
    rhos = np.array(rhos)
    pooled = scipy.stats.spearmanr(torch.cat(all_fast).numpy(), torch.cat(all_exact).numpy()).statistic
    return {"samples": FeatureMapEntropyImportance().samples, "layers": len(rhos), "rho min": float(rhos.min()),
            "rho median": float(np.median(rhos)), "layers < 0.99": int((rhos < 0.99).sum()),
            "pooled rho": float(pooled)}


def main(argv=None) -> list[tuple[str, dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    p.add_argument("--agreement", action="store_true", help="also compare feature-map entropy with its exact form")
    p.add_argument("--resnet56-weights", help="state dict to load into ResNet-56")
    p.add_argument("--fme-samples", nargs="*", default=[], type=lambda v: None if v == "None" else int(v),
                   help="extra rows: feature-map entropy with these samples per map (None: exact)")
    p.add_argument("--criteria", nargs="*", default=data_driven_criteria(),
                   help="data-driven criteria (default: all of ours)")
    args = p.parse_args(argv)
    import timm

    print(f"torch {torch.__version__}, timm {timm.__version__}, Torch-Pruning {metadata.version('torch-pruning')}, "
          "CPU threads "
          f"{torch.get_num_threads()}, {args.clock} clock, fastest of {args.repeats}")
    torch.manual_seed(0)
    results = []
    for name in args.models:
        model, batch, size = _setting(name, args.resnet56_weights)
        batches, source = _batches(args.batches, batch, size)
        times = measure(model, batches, args.repeats, args.criteria, args.clock, tuple(args.fme_samples))
        base, tp_time = times["plain forward"], times["tp ActivationImportance"]
        print(f"\n{name} @ {size}px, {args.batches} batches of {batch} ({source})")
        print(f"{'':26s}{'seconds':>9s}{'/ forward':>11s}{'/ TP activation':>17s}{'target':>9s}")
        for key, s in times.items():
            target = f"<= {TARGET:g}" if key in args.criteria else ""
            print(f"{key:26s}{s:>9.3f}{s / base:>11.2f}{s / tp_time:>17.2f}{target:>9s}")
        results.append((name, times))
        if args.agreement:
            agree = agreement(model, batches)
            print("feature-map entropy vs exact: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in agree.items()))
    return results


if __name__ == "__main__":
    main()
