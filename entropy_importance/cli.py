"""``entropy-prune``: prune a timm / torchvision model (or a saved pruned model) with one criterion."""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from .criteria.registry import get_importance_info, list_importances
from .data import fashion_mnist, find_fashion_mnist
from .engine import count_macs, count_params, prune, stage_widths
from .models import create_model
from .serialization import atomic_write, load_pruned, pruning_record, save_pruned

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
    p.add_argument("--speed-up", type=float, default=None,
                   help="instead of --ratio: reach this MAC speed-up (Torch-Pruning's counter), e.g. 2")
    p.add_argument("--global-pruning", action="store_true", help="rank channels across layers")
    p.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of N")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="example input size (default: the model's own, else 3 224 224)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width for a new model")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument of a new model (repeatable), e.g. --model-arg window_size=4")
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
    if args.speed_up is not None and not args.speed_up > 1:
        raise CLIError(f"--speed-up must be > 1 (MACs before / after), got {args.speed_up}")
    if args.input_size is not None and min(args.input_size) < 1:
        raise CLIError(f"--input-size must be three positive integers, got {args.input_size}")
    if args.num_classes is not None and args.num_classes < 1:
        raise CLIError(f"--num-classes must be a positive integer, got {args.num_classes}")
    _model_kwargs(args)
    if args.round_to is not None and args.round_to < 1:
        raise CLIError(f"--round-to must be a positive integer, got {args.round_to}")
    try:
        info = get_importance_info(args.criterion)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    if info.needs_data and args.data is None:
        raise CLIError(f"criterion {args.criterion!r} needs calibration images: add --data fashion-mnist")
    if args.data is not None and not info.needs_data:
        raise CLIError(f"criterion {args.criterion!r} is data-free: --data would not be used; drop it")
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


def _model_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {}
    for item in args.model_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise CLIError(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _load_model(args: argparse.Namespace):
    """(model, input size, whether weights are random)."""
    if Path(args.model).is_file():
        try:
            model = load_pruned(args.model)
        except ValueError as e:
            raise CLIError(str(e)) from None
        meta = torch.load(args.model, map_location="cpu", weights_only=True).get("meta", {})
        shape = pruning_record(model).inputs.get("shape", [1, 3, 224, 224])
        return model, tuple(args.input_size or shape[1:]), bool(meta.get("random_weights", True))
    if ":" not in args.model:
        raise CLIError(f"model {args.model!r} is neither a file nor 'timm:NAME' / 'torchvision:NAME'")
    kwargs = _model_kwargs(args)
    try:
        model = create_model(args.model, num_classes=args.num_classes, **kwargs)
        native = _default_input_size(model)
        if args.input_size and tuple(args.input_size) != native and args.model.startswith("timm:") \
                and (getattr(model, "pretrained_cfg", None) or {}).get("fixed_input_size") and "img_size" not in kwargs:
            model = create_model(args.model, num_classes=args.num_classes, img_size=args.input_size[1], **kwargs)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    return model, tuple(args.input_size or _default_input_size(model)), True


def _default_input_size(model) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(size) if size else (3, 224, 224)


def _load_checkpoint(model, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"--checkpoint {path}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CLIError(f"--checkpoint {path}: not a state dict")
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
    return {"params": count_params(model), "macs": count_macs(model, x), "widths": stage_widths(model, x)}


def _fmt(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


def run(args: argparse.Namespace) -> dict:
    _validate(args)
    t0 = time.perf_counter()
    model, input_size, random_weights = _load_model(args)
    if args.checkpoint:
        _load_checkpoint(model, args.checkpoint)
        random_weights = False
    model.eval()
    x = torch.randn(1, *input_size)
    needs_data = get_importance_info(args.criterion).needs_data
    data = _calibration_batches(args, input_size) if needs_data else None
    timings: dict[str, float] = {}
    with tqdm(total=3, desc="entropy-prune", unit="stage", file=sys.stderr, disable=None) as bar:
        with _stage(bar, timings, "count_before_s", "counting (before)"):
            before = _summary(model, x)
        with _stage(bar, timings, "prune_s", "pruning"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pruned, result = prune(model, x, args.criterion, ratio=args.ratio, speed_up=args.speed_up,
                                       global_pruning=args.global_pruning, round_to=args.round_to,
                                       calibration_data=data)
            except (ValueError, TypeError) as e:
                raise CLIError(str(e).splitlines()[0]) from None
        with _stage(bar, timings, "count_after_s", "counting (after)"):
            after = _summary(pruned, x)
    meta = {"random_weights": random_weights, "criterion": args.criterion, "ratio": result.ratio,
            "speed_up_target": args.speed_up, "global_pruning": args.global_pruning,
            "entropy_importance": __version__}
    if args.out:
        save_pruned(args.out, pruned, meta)
    timings["total_s"] = time.perf_counter() - t0
    record = pruning_record(pruned)
    report = {
        "model": args.model, "base_spec": record.base.spec if record.base else None, "criterion": args.criterion,
        "ratio": result.ratio, "speed_up_target": args.speed_up, "speed_up": result.speed_up,
        "global_pruning": args.global_pruning, "round_to": args.round_to, "input_size": list(input_size),
        "random_weights": random_weights, "data": args.data if needs_data else None, "before": before,
        "after": after, "kept_unpruned": result.kept_unpruned, "timings": timings, "out": args.out,
    }
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode()))
    return report


def _print_report(r: dict) -> None:
    b, a = r["before"], r["after"]
    scope = "global" if r["global_pruning"] else "local"
    data = f" | calibrated on {r['data']}" if r["data"] else ""
    target = f" (speed-up target {r['speed_up_target']})" if r["speed_up_target"] else ""
    print(f"entropy-importance {__version__}: {r['model']} | criterion {r['criterion']} | "
          f"ratio {r['ratio']:.3f}{target} ({scope}) | input {'x'.join(map(str, r['input_size']))}{data}")
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
    for name, reason in r["kept_unpruned"].items():
        print(f"kept unpruned: {name}: {reason}")
    print(f"wall time {t['total_s']:.2f} s (pruning {t['prune_s']:.2f} s, counting "
          f"{t['count_before_s'] + t['count_after_s']:.2f} s)")
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
    except RuntimeError as e:  # the model could not be pruned as asked
        print(f"entropy-prune: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
