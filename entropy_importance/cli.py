"""``entropy-prune``: prune a timm / torchvision model (or a saved pruned model) with one criterion."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch_pruning as tp
from tqdm import tqdm

from . import __version__
from .counting import count_macs, count_params, stage_widths
from .data import fashion_mnist, find_fashion_mnist
from .models import attention_num_heads, classifier_layers, create_model, sync_attention_heads
from .pruner import refresh_importance
from .registry import create_importance, get_importance_info, list_importances
from .serialization import PrunedModelRecord, _rebuild, atomic_write, load_record, save_pruned

DEFAULT_MODEL = "timm:resnet18"
DEFAULT_CRITERION = "channel-similarity-entropy"


class CLIError(Exception):
    """A bad input: printed as one line, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-prune",
        description="Prune a model's channels with an entropy criterion through Torch-Pruning's dependency graph.",
    )
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"timm:NAME, torchvision:NAME or a file saved by --out (default {DEFAULT_MODEL})")
    p.add_argument("--criterion", default=DEFAULT_CRITERION,
                   help=f"registry name (default {DEFAULT_CRITERION}); --list-criteria shows them")
    p.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio in [0, 1) (default 0.5)")
    p.add_argument("--global-pruning", action="store_true", help="rank channels across layers")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of N")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="example input size (default: the model's own, else 3 224 224)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width for a new model")
    p.add_argument("--checkpoint", default=None, help="state_dict to load into the model before pruning")
    p.add_argument("--data", choices=["fashion-mnist"], default=None,
                   help="calibration images for data-driven criteria (local Fashion-MNIST, resized to the input size)")
    p.add_argument("--calibration-batches", type=int, default=8, help="batches of 32 images to calibrate on")
    p.add_argument("--out", default=None, help="write the pruned model here (load with load_pruned)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--list-criteria", action="store_true", help="list the registered criteria and exit")
    p.add_argument("--version", action="version", version=f"entropy-importance {__version__}")
    return p


def _check_writable(path: str | None, what: str) -> None:
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise CLIError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CLIError(f"{what} {path}: directory {parent} is not writable")
    if Path(path).is_dir():
        raise CLIError(f"{what} {path} is a directory; give a file name")


def _validate(args: argparse.Namespace) -> None:
    if not 0.0 <= args.ratio < 1.0:
        raise CLIError(f"--ratio must be in [0, 1), got {args.ratio}")
    if args.round_to is not None and args.round_to < 1:
        raise CLIError(f"--round-to must be a positive integer, got {args.round_to}")
    try:
        info = get_importance_info(args.criterion)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    if info.needs_data and args.data is None:
        raise CLIError(f"criterion {args.criterion!r} needs calibration images: add --data fashion-mnist")
    if args.calibration_batches < 1:
        raise CLIError(f"--calibration-batches must be >= 1, got {args.calibration_batches}")
    if args.data == "fashion-mnist" and find_fashion_mnist() is None:
        raise CLIError("--data fashion-mnist: files not found (apt-get install dataset-fashion-mnist, "
                       "or set FASHION_MNIST_ROOT)")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise CLIError(f"--checkpoint {args.checkpoint}: no such file")
    _check_writable(args.out, "--out")
    _check_writable(args.json, "--json")


def _calibration_batches(args: argparse.Namespace, input_size: tuple[int, int, int]) -> list:
    """``--calibration-batches`` batches of 32 Fashion-MNIST training images resized to ``input_size``."""
    images, labels = fashion_mnist("train", limit=32 * args.calibration_batches, channels=input_size[0]).tensors
    if images.shape[-2:] != tuple(input_size[1:]):
        images = torch.nn.functional.interpolate(images, size=tuple(input_size[1:]), mode="bilinear",
                                                 align_corners=False)
    return list(zip(images.split(32), labels.split(32), strict=True))


def _load_model(args: argparse.Namespace):
    """(model, record of what it was built from, whether weights are random)."""
    if Path(args.model).is_file():
        try:
            payload = load_record(args.model)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise CLIError(f"{args.model}: cannot read a saved pruned model ({e})") from None
        model, record = _rebuild(payload)
        return model, record, bool(record.meta.get("random_weights", True))
    if ":" not in args.model:
        raise CLIError(f"model {args.model!r} is neither a file nor 'timm:NAME' / 'torchvision:NAME'")
    try:
        model = create_model(args.model, num_classes=args.num_classes)
    except ValueError as e:
        raise CLIError(str(e)) from None
    size = args.input_size or _default_input_size(model)
    return model, PrunedModelRecord(args.model, tuple(size), args.num_classes), True


def _default_input_size(model) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(size) if size else (3, 224, 224)


def _load_checkpoint(model, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"--checkpoint {path}: cannot read ({e})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CLIError(f"--checkpoint {path} does not fit the model: {first}") from None


@contextmanager
def _stage(bar: tqdm, timings: dict[str, float], key: str, label: str) -> Iterator[None]:
    bar.set_postfix_str(label)
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t
    bar.update()


def _summary(model, x: torch.Tensor) -> dict:
    with torch.no_grad():
        shape = list(model(x).shape)
    return {"params": count_params(model), "macs": count_macs(model, x), "widths": stage_widths(model, x),
            "output_shape": shape}


def _fmt(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


def run(args: argparse.Namespace) -> dict:
    _validate(args)
    t0 = time.perf_counter()
    model, record, random_weights = _load_model(args)
    if args.checkpoint:
        _load_checkpoint(model, args.checkpoint)
        random_weights = False
    if args.input_size:
        record.input_size = tuple(args.input_size)
    model.eval()
    x = torch.randn(1, *record.input_size)
    importance = create_importance(args.criterion)
    needs_data = get_importance_info(args.criterion).needs_data
    timings: dict[str, float] = {}
    with tqdm(total=4, desc="entropy-prune", unit="stage", file=sys.stderr, disable=None) as bar:
        with _stage(bar, timings, "count_before_s", "counting (before)"):
            before = _summary(model, x)

        with _stage(bar, timings, "graph_s", "building dependency graph"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(
                model, x, importance=importance, pruning_ratio=args.ratio, global_pruning=args.global_pruning,
                round_to=args.round_to, ignored_layers=classifier_layers(model),
                num_heads=attention_num_heads(model),
            )

        with _stage(bar, timings, "score_and_prune_s", "scoring and pruning"):
            if needs_data:  # our statistics, or Torch-Pruning's gradients / activation statistics
                refresh_importance(importance, model, _calibration_batches(args, record.input_size))
            pruner.step()
            sync_attention_heads(model)

        with _stage(bar, timings, "count_after_s", "counting (after)"):
            after = _summary(model, x)
    if after["output_shape"] != before["output_shape"]:
        raise RuntimeError(f"output shape changed from {before['output_shape']} to {after['output_shape']}")

    record.pruning_history = list(record.pruning_history) + [list(h) for h in pruner.pruning_history()]
    record.meta = {
        **record.meta, "random_weights": random_weights, "criterion": args.criterion, "ratio": args.ratio,
        "global_pruning": args.global_pruning, "entropy_importance": __version__,
    }
    if args.out:
        save_pruned(args.out, model, record)
    timings["total_s"] = time.perf_counter() - t0
    report = {
        "model": args.model, "base_spec": record.spec, "criterion": args.criterion, "ratio": args.ratio,
        "global_pruning": args.global_pruning, "round_to": args.round_to, "input_size": list(record.input_size),
        "random_weights": random_weights, "data": args.data, "before": before, "after": after, "timings": timings,
        "out": args.out,
    }
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


def _print_report(r: dict) -> None:
    b, a = r["before"], r["after"]
    scope = "global" if r["global_pruning"] else "local"
    data = f" | calibrated on {r['data']}" if r["data"] else ""
    print(f"entropy-importance {__version__}: {r['model']} | criterion {r['criterion']} | "
          f"ratio {r['ratio']} ({scope}) | input {'x'.join(map(str, r['input_size']))}{data}")
    if r["random_weights"]:
        print("note: weights are random (no pretrained weights are downloaded); pass --checkpoint FILE to "
              "prune trained weights")
    rows = [("params", b["params"], a["params"]),
            ("MACs (thop)", b["macs"]["thop"], a["macs"]["thop"]),
            ("MACs (Torch-Pruning)", b["macs"]["tp"], a["macs"]["tp"])]
    print(f"{'':22s}{'before':>14s}{'after':>14s}{'after/before':>14s}")
    for name, x0, x1 in rows:
        print(f"{name:22s}{_fmt(x0):>14s}{_fmt(x1):>14s}{x1 / x0:>14.3f}")
    print("MACs: both counters agree on conv/linear layers; thop counts BatchNorm as 2 ops per element and skips "
          "ReLU and max-pooling, Torch-Pruning counts 1 per element for each; Torch-Pruning's is the counter of "
          "its speed-up tables.")
    print("widths per stage (before -> after):")
    for name, w0 in b["widths"].items():
        print(f"  {name:24s}{w0:>6d} -> {a['widths'].get(name, w0)}")
    t = r["timings"]
    print(f"wall time {t['total_s']:.2f} s (graph {t['graph_s']:.2f} s, calibration+scoring+pruning "
          f"{t['score_and_prune_s']:.2f} s, counting {t['count_before_s'] + t['count_after_s']:.2f} s)")
    if r["out"]:
        print(f"saved pruned model to {r['out']} (load: entropy_importance.load_pruned({r['out']!r}))")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_criteria:
        for name in list_importances():
            info = get_importance_info(name)
            needs = "labels" if info.needs_labels else "images" if info.needs_data else "data-free"
            print(f"{name:30s}{needs:12s}{info.paper}")
        return 0
    try:
        report = run(args)
    except CLIError as e:
        print(f"entropy-prune: error: {e}", file=sys.stderr)
        return 2
    _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
