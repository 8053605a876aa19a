"""Calibration cost of each data-driven criterion, side by side with a plain forward and Torch-Pruning's
ActivationImportance collection, on the same batches in the same run.

    python -m benchmarks.calibration_overhead [--batches 4] [--repeats 5] [--settings resnet50 resnet56]

Settings: timm ``resnet50`` at 224 px, batch 16; CIFAR ResNet-56 (option-B) at 32 px, batch 128. Images are
Fashion-MNIST (padded to 32 px, 3 channels; bilinearly resized to 224 px for ResNet-50); random images when
the dataset is absent. Times are the fastest of ``--repeats`` runs (methods interleaved) after one warm-up;
ratios are taken to the plain ``torch.no_grad()`` forward over the same batches.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torch_pruning as tp

from entropy_importance import create_importance
from recipes.cifar_models import resnet56
from entropy_importance.data import fashion_mnist, find_fashion_mnist
from entropy_importance.models import create_model

CRITERIA = ("gap-entropy", "conditional-entropy", "feature-map-entropy")
TARGETS = {"gap-entropy": 1.25, "conditional-entropy": 1.25, "feature-map-entropy": 1.5}


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


def measure(model: torch.nn.Module, batches: list, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` runs per method (the least disturbed by other load on a shared machine); methods
    are interleaved within each repeat so that drifts in the machine's speed hit all of them alike."""
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
    for crit in CRITERIA:
        imp = create_importance(crit)
        methods[crit] = lambda imp=imp: imp.calibrate(model, batches, progress=False)
    runs: dict[str, list[float]] = {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(repeats):
        for key, fn in methods.items():
            t = time.perf_counter()
            fn()
            runs[key].append(time.perf_counter() - t)
    return {k: min(v) for k, v in runs.items()}


def main(argv=None) -> list[tuple[str, dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--settings", nargs="*", default=["resnet50", "resnet56"], choices=["resnet50", "resnet56"])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    results = []
    for setting in args.settings:
        if setting == "resnet50":
            model, batch, size = create_model("timm:resnet50", num_classes=10), 16, 224
        else:
            model, batch, size = resnet56(10), 128, 32
        batches, source = _batches(args.batches, batch, size)
        times = measure(model, batches, args.repeats)
        base, tp_time = times["plain forward"], times["tp ActivationImportance"]
        print(f"\n{setting} @ {size}px, {args.batches} batches of {batch} ({source}), CPU threads "
              f"{torch.get_num_threads()}, fastest of {args.repeats}")
        print(f"{'':26s}{'seconds':>9s}{'/ forward':>11s}{'/ TP activation':>17s}{'target':>9s}")
        for key, s in times.items():
            target = f"<= {TARGETS[key]}" if key in TARGETS else ""
            print(f"{key:26s}{s:>9.3f}{s / base:>11.2f}{s / tp_time:>17.2f}{target:>9s}")
        results.append((setting, times))
    return results


if __name__ == "__main__":
    main()
