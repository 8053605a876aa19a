"""``entropy-prune``'s arguments: the parser (one function per option group: a new group is one more function in
:data:`OPTION_GROUPS`) and what ``--data`` / ``--model-arg`` / ``--latency`` parse into. Checking them is
:mod:`.checks`."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__

__all__ = ["CLIError", "DataSource", "LatencyPlan", "build_parser", "model_kwargs", "parse_data", "latency_plan",
           "DEFAULT_MODEL", "DEFAULT_CRITERION", "DATA_KINDS", "LATENCY_MODES", "OPTION_GROUPS"]

DEFAULT_MODEL = "timm:resnet18"
DEFAULT_CRITERION = "channel-similarity-entropy"
DATA_KINDS = ("fashion-mnist", "imagefolder", "cifar10")
LATENCY_MODES = ("off", "quick", "full")
#: batch sizes timed by default: batch 1 in quick mode (the default: README command 1's run answers in seconds),
#: batch 1 and 32 in full mode
DEFAULT_BATCH_SIZES = {"quick": (1,), "full": (1, 32)}
#: ``--latency quick``: seconds of timing per backend, warm-up included, shared by its figures (model x batch size)
QUICK_BUDGET_S = 2.0
#: warm-up runs, and the default of ``--latency-runs`` (the cap in quick mode, the count in full mode)
_LATENCY_DEFAULTS = {"quick": (1, 100), "full": (5, 20)}


class CLIError(Exception):
    """A bad input: printed as one line, exit status 2."""


@dataclass(frozen=True)
class DataSource:
    """What ``--data`` names: ``kind`` in :data:`DATA_KINDS`, and a folder for the last two."""

    kind: str
    directory: str | None = None

    def __str__(self) -> str:
        return self.kind if self.directory is None else f"{self.kind}:{self.directory}"


@dataclass(frozen=True)
class LatencyPlan:
    """How latency is measured: ``runs`` timed runs after ``warmup`` at each of ``batch_sizes`` (with
    ``budget_s``: as many as fit in that many seconds per backend, shared by its figures, at most ``runs``)."""

    mode: str
    batch_sizes: tuple[int, ...]
    runs: int
    warmup: int
    budget_s: float | None


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"timm:NAME, torchvision:NAME or a file saved by --out (default {DEFAULT_MODEL})")
    p.add_argument("--pretrained", action="store_true",
                   help="load the library's pretrained weights (timm / torchvision loaders and caches)")
    p.add_argument("--checkpoint", default=None, help="state_dict to load into the model before pruning")
    p.add_argument("--criterion", default=DEFAULT_CRITERION,
                   help=f"registry name (default {DEFAULT_CRITERION}); --list-criteria shows them")


def _target_options(p: argparse.ArgumentParser) -> None:
    target = p.add_argument_group("how much to prune")
    target.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio in [0, 1) (default 0.5)")
    target.add_argument("--speed-up", type=float, default=None,
                        help="instead of --ratio: reach this MAC speed-up (Torch-Pruning's counter), e.g. 2")
    target.add_argument("--global-pruning", action="store_true", help="rank channels across layers")
    target.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of N")


def _shape_options(p: argparse.ArgumentParser) -> None:
    shape = p.add_argument_group("model shape")
    shape.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                       help="example input size (default: the model's own, else 3 224 224)")
    shape.add_argument("--num-classes", type=int, default=None, help="classifier width for a new model")
    shape.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="constructor argument of a new model (repeatable), e.g. --model-arg window_size=4")


def _data_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("calibration data (data-driven criteria and --recover)")
    data.add_argument("--data", default=None, metavar="SOURCE",
                      help="fashion-mnist (local files: Debian's dataset-fashion-mnist, $FASHION_MNIST_ROOT or the "
                           "cache), imagefolder:DIR (one subfolder per class, or images directly in DIR) or "
                           "cifar10:DIR; preprocessed the way the model expects")
    data.add_argument("--download", action="store_true", help="with --data cifar10:DIR: download CIFAR-10 into DIR")
    data.add_argument("--calibration-batches", type=int, default=8, help="batches to calibrate on (default 8)")
    data.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default 32)")
    data.add_argument("--recover", choices=("none", "bn", "reconstruct", "reconstruct+bn"), default="none",
                      help="repair the pruned model without training on the --data images: reconstruct (layer-wise "
                           "least squares), bn (BatchNorm statistics) or both (default none)")


def _run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("device and measurement")
    run.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    run.add_argument("--latency", choices=LATENCY_MODES, default="quick",
                     help=f"quick (default): about {QUICK_BUDGET_S:g} s of timing in all, shared by the figures "
                          "(each at least 3 timed runs after a warm-up run); full: --latency-runs runs after 5 warm-up "
                          "runs; off: no latency")
    run.add_argument("--no-latency", dest="latency", action="store_const", const="off",
                     help="the same as --latency off")
    run.add_argument("--latency-runs", type=int, default=None, metavar="N",
                     help="timed runs per figure: exactly N with --latency full (default 20), at most N with quick "
                          "(default 100)")
    run.add_argument("--latency-batch-sizes", type=int, nargs="+", default=None, metavar="B",
                     help="batch sizes to time (default: 1 with --latency quick, 1 32 with full)")
    run.add_argument("--onnx", action="store_true",
                     help="also time an ONNX export through ONNX Runtime on CPU (needs the [onnx] extra)")


def _output_options(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output")
    out.add_argument("--out", default=None, help="write the pruned model here (load with load_pruned)")
    out.add_argument("--json", default=None, help="write the report as JSON here")
    out.add_argument("--quiet", action="store_true", help="no progress bars (they are off anyway when stderr "
                                                          "is not a terminal)")
    p.add_argument("--list-criteria", action="store_true", help="list the registered criteria and exit")
    p.add_argument("--version", action="version", version=f"entropy-importance {__version__}")


#: the option groups in the order ``--help`` shows them; each adds its options to the parser
OPTION_GROUPS: list[Callable[[argparse.ArgumentParser], None]] = [
    _model_options, _target_options, _shape_options, _data_options, _run_options, _output_options,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``entropy-prune`` parser: every group of :data:`OPTION_GROUPS`."""
    p = argparse.ArgumentParser(
        prog="entropy-prune",
        description="Prune a model's channels with an entropy criterion through Torch-Pruning's dependency graph.",
    )
    for add_group in OPTION_GROUPS:
        add_group(p)
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


def parse_data(args: argparse.Namespace) -> DataSource | None:
    """``--data`` (and ``--download``) parsed, without looking at any file."""
    if args.data is None:
        if args.download:
            raise CLIError("--download needs --data cifar10:DIR")
        return None
    kind, sep, directory = args.data.partition(":")
    if kind not in DATA_KINDS:
        raise CLIError(f"--data {args.data!r}: expected fashion-mnist, imagefolder:DIR or cifar10:DIR")
    if kind == "fashion-mnist" and sep:
        raise CLIError("--data fashion-mnist takes no folder (set FASHION_MNIST_ROOT to read it elsewhere)")
    if kind != "fashion-mnist" and not directory:
        raise CLIError(f"--data {kind} needs a folder: --data {kind}:DIR")
    if args.download and kind != "cifar10":
        raise CLIError(f"--download only downloads CIFAR-10 (--data cifar10:DIR), not {kind}")
    return DataSource(kind, directory or None)


def latency_plan(args: argparse.Namespace) -> LatencyPlan | None:
    """``--latency`` / ``--latency-runs`` / ``--latency-batch-sizes`` / ``--onnx`` as a plan (None: off); the numbers
    are checked to be positive before (:mod:`.checks`)."""
    if args.latency == "off":
        if args.onnx:
            raise CLIError("--onnx measures latency: drop --latency off / --no-latency")
        for flag, value in (("--latency-runs", args.latency_runs), ("--latency-batch-sizes", args.latency_batch_sizes)):
            if value is not None:
                raise CLIError(f"{flag} would not be used with --latency off / --no-latency: drop one of them")
        return None
    warmup, default_runs = _LATENCY_DEFAULTS[args.latency]
    runs = default_runs if args.latency_runs is None else args.latency_runs
    sizes = tuple(args.latency_batch_sizes or DEFAULT_BATCH_SIZES[args.latency])
    return LatencyPlan(args.latency, sizes, runs, warmup, QUICK_BUDGET_S if args.latency == "quick" else None)
