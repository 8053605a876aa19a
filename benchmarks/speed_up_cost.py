"""What reaching a MAC speed-up costs: ``prune(speed_up=s)`` against ``prune(ratio=r)`` for the ratio ``r`` that
reaches the same speed-up, side by side in one run (interleaved, fastest of ``--repeats``, one torch thread by default).

    python -m benchmarks.speed_up_cost                 # CIFAR ResNet-56 + gap-entropy, timm resnet50 + FEC
    python -m benchmarks.speed_up_cost --quick         # ResNet-56 only

Both schedules of ``prune()`` are timed: ``one-shot`` (the default: a ratio search, the criterion measured once) and
``progressive`` (small steps of ``--step-ratio``, data-driven criteria re-measured before each step). Calibration
data: 4 batches of 32 Fashion-MNIST training images (32 px, or resized), the same for every call.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from entropy_importance import prune
from entropy_importance.data import fashion_mnist
from entropy_importance.models import create_model
from recipes.cifar_models import resnet56


def _data(size: int) -> list:
    x, y = fashion_mnist("train", limit=128).tensors
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return list(zip(x.split(32), y.split(32), strict=True))


def _seconds(fn) -> tuple[float, object]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ResNet-56 only")
    p.add_argument("--speed-up", type=float, default=2.0)
    p.add_argument("--step-ratio", type=float, default=0.02)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, default=224, help="input size of timm resnet50")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: least disturbed by a busy machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [("CIFAR ResNet-56", resnet56(10).eval(), 32, "gap-entropy")]
    if not args.quick:
        cases.append(("timm resnet50", create_model("timm:resnet50", num_classes=10).eval(), args.size,
                      "channel-similarity-entropy"))
    print(f"| model | criterion | schedule | prune(speed_up={args.speed_up:g}) s | reached | ratio r | "
          "prune(ratio=r) s | ratio of times |")
    print("|---|---|---|---|---|---|---|---|")
    for label, model, size, criterion in cases:
        x, data = torch.randn(1, 3, size, size), _data(size)
        for schedule in ("one-shot", "progressive"):
            t_speed, report, ratio, t_ratio = _compare(model, x, criterion, data, schedule, args)
            print(f"| {label} | {criterion} | {schedule} | {t_speed:.2f} | {report.speed_up:.3f}x | {ratio:.3f} | "
                  f"{t_ratio:.2f} | {t_speed / t_ratio:.2f}x |", flush=True)


def _compare(model, x, criterion: str, data: list, schedule: str, args: argparse.Namespace):
    """(seconds of prune(speed_up), its report, the ratio reached, seconds of prune(ratio)), interleaved repeats:
    both calls see the same machine load."""
    def by_speed_up():
        return prune(model, x, criterion, speed_up=args.speed_up, schedule=schedule, step_ratio=args.step_ratio,
                     calibration_data=data)[1]

    t_speed, report = _seconds(by_speed_up)
    ratio = report.ratio if report.ratio is not None else round(args.step_ratio * report.steps, 4)

    def by_ratio():
        return prune(model, x, criterion, ratio=ratio, calibration_data=data)

    t_ratio, _ = _seconds(by_ratio)
    for _ in range(args.repeats - 1):
        t_speed = min(t_speed, _seconds(by_speed_up)[0])
        t_ratio = min(t_ratio, _seconds(by_ratio)[0])
    return t_speed, report, ratio, t_ratio


if __name__ == "__main__":
    main()
