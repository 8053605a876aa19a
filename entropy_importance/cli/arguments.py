"""``entropy-prune``'s arguments and their validation (everything checked before anything is loaded or written)."""

from __future__ import annotations

import argparse
import ast
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..criteria.registry import get_importance_info
from ..data import find_fashion_mnist

__all__ = ["CLIError", "DataSource", "build_parser", "validate", "model_kwargs", "data_source",
           "DEFAULT_MODEL", "DEFAULT_CRITERION"]

DEFAULT_MODEL = "timm:resnet18"
DEFAULT_CRITERION = "channel-similarity-entropy"
DATA_KINDS = ("fashion-mnist", "imagefolder", "cifar10")


class CLIError(Exception):
    """A bad input: printed as one line, exit status 2."""


@dataclass(frozen=True)
class DataSource:
    """What ``--data`` names: ``kind`` in :data:`DATA_KINDS`, and a folder for the last two."""

    kind: str
    directory: str | None = None

    def __str__(self) -> str:
        return self.kind if self.directory is None else f"{self.kind}:{self.directory}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="entropy-prune",
        description="Prune a model's channels with an entropy criterion through Torch-Pruning's dependency graph.",
    )
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"timm:NAME, torchvision:NAME or a file saved by --out (default {DEFAULT_MODEL})")
    p.add_argument("--pretrained", action="store_true",
                   help="load the library's pretrained weights (timm / torchvision loaders and caches)")
    p.add_argument("--checkpoint", default=None, help="state_dict to load into the model before pruning")
    p.add_argument("--criterion", default=DEFAULT_CRITERION,
                   help=f"registry name (default {DEFAULT_CRITERION}); --list-criteria shows them")
    target = p.add_argument_group("how much to prune")
    target.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio in [0, 1) (default 0.5)")
    target.add_argument("--speed-up", type=float, default=None,
                        help="instead of --ratio: reach this MAC speed-up (Torch-Pruning's counter), e.g. 2")
    target.add_argument("--global-pruning", action="store_true", help="rank channels across layers")
    target.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of N")
    shape = p.add_argument_group("model shape")
    shape.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                       help="example input size (default: the model's own, else 3 224 224)")
    shape.add_argument("--num-classes", type=int, default=None, help="classifier width for a new model")
    shape.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="constructor argument of a new model (repeatable), e.g. --model-arg window_size=4")
    data = p.add_argument_group("calibration data (data-driven criteria only)")
    data.add_argument("--data", default=None, metavar="SOURCE",
                      help="fashion-mnist (local Debian files), imagefolder:DIR (one subfolder per class, or images "
                           "directly in DIR) or cifar10:DIR; preprocessed the way the model expects")
    data.add_argument("--download", action="store_true", help="with --data cifar10:DIR: download CIFAR-10 into DIR")
    data.add_argument("--calibration-batches", type=int, default=8, help="batches to calibrate on (default 8)")
    data.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default 32)")
    run = p.add_argument_group("device and measurement")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    run.add_argument("--latency-runs", type=int, default=20,
                     help="timed runs per latency measurement, after 5 warm-up runs (default 20)")
    run.add_argument("--latency-batch-sizes", type=int, nargs="+", default=[1, 32], metavar="B",
                     help="batch sizes to time (default 1 32)")
    run.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    run.add_argument("--onnx", action="store_true",
                     help="also time an ONNX export through ONNX Runtime on CPU (needs the [onnx] extra)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="write the pruned model here (load with load_pruned)")
    out.add_argument("--json", default=None, help="write the report as JSON here")
    out.add_argument("--quiet", action="store_true", help="no progress bars (they are off anyway when stderr "
                                                          "is not a terminal)")
    p.add_argument("--list-criteria", action="store_true", help="list the registered criteria and exit")
    p.add_argument("--version", action="version", version=f"entropy-importance {__version__}")
    return p


def model_kwargs(args: argparse.Namespace) -> dict:
    """``--model-arg KEY=VALUE`` items as constructor keyword arguments (values read as Python literals)."""
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


def data_source(args: argparse.Namespace) -> DataSource | None:
    """``--data`` parsed; folders are checked to exist (their images are checked when read)."""
    if args.data is None:
        if args.download:
            raise CLIError("--download needs --data cifar10:DIR")
        return None
    kind, sep, directory = args.data.partition(":")
    if kind not in DATA_KINDS:
        raise CLIError(f"--data {args.data!r}: expected fashion-mnist, imagefolder:DIR or cifar10:DIR")
    if kind == "fashion-mnist":
        if sep:
            raise CLIError("--data fashion-mnist takes no folder (set FASHION_MNIST_ROOT to read it elsewhere)")
        if find_fashion_mnist() is None:
            raise CLIError("--data fashion-mnist: files not found (apt-get install dataset-fashion-mnist, "
                           "or set FASHION_MNIST_ROOT)")
    elif not directory:
        raise CLIError(f"--data {kind} needs a folder: --data {kind}:DIR")
    if args.download and kind != "cifar10":
        raise CLIError(f"--download only downloads CIFAR-10 (--data cifar10:DIR), not {kind}")
    if kind == "imagefolder" and not Path(directory).expanduser().is_dir():
        raise CLIError(f"--data {args.data}: folder {directory} does not exist")
    if kind == "cifar10" and not args.download and not (Path(directory).expanduser() / "cifar-10-batches-py").is_dir():
        raise CLIError(f"--data {args.data}: no cifar-10-batches-py/ folder in {directory}; add --download")
    return DataSource(kind, directory or None)


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


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CLIError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device}: no CUDA device is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise CLIError(f"{flag} must be a positive integer, got {value}")


def validate(args: argparse.Namespace) -> DataSource | None:
    """Check every argument; returns the parsed ``--data``. Raises :class:`CLIError` with one line."""
    if not 0.0 <= args.ratio < 1.0:
        raise CLIError(f"--ratio must be in [0, 1), got {args.ratio}")
    if args.speed_up is not None and not args.speed_up > 1:
        raise CLIError(f"--speed-up must be > 1 (MACs before / after), got {args.speed_up}")
    if args.input_size is not None and min(args.input_size) < 1:
        raise CLIError(f"--input-size must be three positive integers, got {args.input_size}")
    _positive(args.num_classes, "--num-classes")
    _positive(args.round_to, "--round-to")
    _positive(args.calibration_batches, "--calibration-batches")
    _positive(args.batch_size, "--batch-size")
    _positive(args.latency_runs, "--latency-runs")
    for b in args.latency_batch_sizes:
        _positive(b, "--latency-batch-sizes")
    model_kwargs(args)
    try:
        info = get_importance_info(args.criterion)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    source = data_source(args)
    if info.needs_data and source is None:
        raise CLIError(f"criterion {args.criterion!r} needs calibration images: add --data fashion-mnist "
                       "(or imagefolder:DIR / cifar10:DIR)")
    if source is not None and not info.needs_data:
        raise CLIError(f"criterion {args.criterion!r} is data-free: --data would not be used; drop it")
    is_file = Path(args.model).is_file()
    if args.pretrained and is_file:
        raise CLIError(f"--pretrained builds a new model; {args.model} is a saved pruned model with its own weights")
    if args.pretrained and args.checkpoint:
        raise CLIError("--pretrained and --checkpoint both set the weights: give one")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise CLIError(f"--checkpoint {args.checkpoint}: no such file")
    _check_device(args.device)
    if args.onnx and args.no_latency:
        raise CLIError("--onnx measures latency: drop --no-latency")
    if args.onnx:
        from ..latency import onnx_available

        if not onnx_available():
            raise CLIError("--onnx needs onnx, onnxscript and onnxruntime: pip install 'entropy-importance[onnx]'")
    _check_writable(args.out, "--out")
    _check_writable(args.json, "--json")
    return source
