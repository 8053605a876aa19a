"""Every check of ``entropy-prune``'s arguments, done before anything is built, read or written: first the values
and their combinations (no file is looked at), then the paths (looked up, listed, never read)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..criteria.registry import ImportanceInfo, get_importance_info
from ..data.fashion_mnist import cache_dir, find_fashion_mnist
from ..data.images import IMAGE_EXTENSIONS
from .arguments import CLIError, DataSource, LatencyPlan, latency_plan, model_kwargs, parse_data

__all__ = ["Plan", "validate", "no_class_folders", "one_class", "too_many_classes"]

_SOURCES = ("timm", "torchvision")
#: the class count of the fixed datasets (an image folder's is read from its subfolders)
_DATASET_CLASSES = {"fashion-mnist": 10, "cifar10": 10}
#: the criterion whose scores need every label to be one the classifier scores
_SCORES_LABELS = "tp-taylor"


@dataclass(frozen=True)
class Plan:
    """What the checked arguments ask for: calibration data (None: data-free), a latency plan (None: off) and
    whether MODEL is a saved pruned model (else a new one is built)."""

    data: DataSource | None
    latency: LatencyPlan | None
    saved_model: bool


def no_class_folders(criterion: str, source: DataSource) -> CLIError:
    return CLIError(f"criterion {criterion!r} needs class labels, and {source} has no class subfolders: put one "
                    "subfolder of images per class in it")


def one_class(criterion: str, source: DataSource) -> CLIError:
    return CLIError(f"criterion {criterion!r} compares classes, and the calibration images of {source} are all of "
                    "one class: use images of at least two classes (more --calibration-batches, or more class "
                    "subfolders)")


def too_many_classes(source: DataSource, found: int, classes: int) -> CLIError:
    return CLIError(f"{source} has {found} classes, the model's classifier {classes}: Taylor scores need labels the "
                    "classifier can score (--num-classes, or data with fewer classes)")


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise CLIError(f"{flag} must be a positive integer, got {value}")


def _check_numbers(args: argparse.Namespace) -> None:
    if not 0.0 <= args.ratio < 1.0:
        raise CLIError(f"--ratio must be in [0, 1), got {args.ratio}")
    if args.speed_up is not None and not args.speed_up > 1:
        raise CLIError(f"--speed-up must be > 1 (MACs before / after), got {args.speed_up}")
    if args.input_size is not None and min(args.input_size) < 1:
        raise CLIError(f"--input-size must be three positive integers, got {args.input_size}")
    for flag in ("--num-classes", "--round-to", "--calibration-batches", "--batch-size", "--latency-runs"):
        _positive(getattr(args, flag[2:].replace("-", "_")), flag)
    for b in args.latency_batch_sizes or ():
        _positive(b, "--latency-batch-sizes")


def _criterion(args: argparse.Namespace, source: DataSource | None) -> ImportanceInfo:
    try:
        info = get_importance_info(args.criterion)
    except KeyError as e:
        raise CLIError(str(e.args[0])) from None
    if info.needs_data and source is None:
        raise CLIError(f"criterion {args.criterion!r} needs calibration images: add --data fashion-mnist "
                       "(or imagefolder:DIR / cifar10:DIR)")
    recover = getattr(args, "recover", "none")
    if recover != "none" and source is None:
        raise CLIError(f"--recover {recover} needs calibration images: add --data fashion-mnist "
                       "(or imagefolder:DIR / cifar10:DIR)")
    if source is not None and not info.needs_data and recover == "none":
        raise CLIError(f"criterion {args.criterion!r} is data-free: --data would not be used; drop it (or add "
                       "--recover reconstruct to repair the pruned model on it)")
    return info


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


def _check_values(args: argparse.Namespace) -> tuple[DataSource | None, LatencyPlan | None]:
    """The arguments alone and their combinations; no file is looked at."""
    _check_numbers(args)
    model_kwargs(args)
    source = parse_data(args)
    _criterion(args, source)
    latency = latency_plan(args)
    if args.pretrained and args.checkpoint:
        raise CLIError("--pretrained and --checkpoint both set the weights: give one")
    _check_device(args.device)
    if args.onnx:
        from ..latency import onnx_available

        if not onnx_available():
            raise CLIError("--onnx needs onnx, onnxscript and onnxruntime: pip install 'entropy-importance[onnx]'")
    return source, latency


def _check_new_model(args: argparse.Namespace) -> None:
    """``timm:NAME`` / ``torchvision:NAME`` names a model the library has (and its weights, with --pretrained)."""
    source, sep, name = args.model.partition(":")
    if not sep or source not in _SOURCES:
        raise CLIError(f"model {args.model!r} is neither a file nor 'timm:NAME' / 'torchvision:NAME'")
    if source == "timm":
        import timm

        if name not in timm.list_models():
            raise CLIError(f"unknown timm model {name!r}; see timm.list_models()")
        if args.pretrained and not timm.is_model_pretrained(name) and \
                "pretrained_cfg_overlay" not in model_kwargs(args):
            raise CLIError(f"timm has no pretrained weights for {name!r}; drop --pretrained or pass --checkpoint")
    else:
        import torchvision

        if name not in torchvision.models.list_models():
            raise CLIError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")


def _check_model(args: argparse.Namespace) -> bool:
    """Whether MODEL is a saved pruned model (a file); else it must name a model to build."""
    if not Path(args.model).is_file():
        _check_new_model(args)
        if args.checkpoint is not None and not Path(args.checkpoint).is_file():
            raise CLIError(f"--checkpoint {args.checkpoint}: no such file")
        return False
    for flag, given in (("--pretrained", args.pretrained), ("--checkpoint", args.checkpoint is not None),
                        ("--num-classes", args.num_classes is not None), ("--model-arg", bool(args.model_arg))):
        if given:
            raise CLIError(f"{flag} is for a new model; {args.model} is a saved pruned model with its own weights "
                           f"and shape: drop {flag}")
    return True


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.iterdir())


def _check_image_folder(source: DataSource, criterion: str, needs_labels: bool) -> int:
    """The folder's layout (listed, no image opened): images flat or in class subfolders, and the classes a
    label-aware criterion needs. Returns the number of labels its images can have (0: unlabelled)."""
    root = Path(source.directory).expanduser()
    if not root.is_dir():
        raise CLIError(f"--data {source}: folder {source.directory} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir())  # labels: indices in this order (torchvision's)
    with_images = [i for i, p in enumerate(folders) if _has_images(p)]
    classes = len(with_images)
    if not classes and not _has_images(root):
        raise CLIError(f"--data {source}: image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS[:3])}, "
                       "...): put images in it, or one subfolder of images per class")
    if needs_labels and classes == 0:
        raise no_class_folders(criterion, source)
    if needs_labels and classes == 1:
        raise one_class(criterion, source)
    return with_images[-1] + 1 if with_images else 0


def _check_data(args: argparse.Namespace, source: DataSource, info: ImportanceInfo) -> None:
    if source.kind == "fashion-mnist" and find_fashion_mnist() is None:
        raise CLIError("--data fashion-mnist: files not found: apt-get install dataset-fashion-mnist, set "
                       "FASHION_MNIST_ROOT to a folder holding them, or download them into "
                       f"{cache_dir()} (python -c 'import entropy_importance.data as d; d.download_fashion_mnist()')")
    labels = _DATASET_CLASSES.get(source.kind, 0)
    if source.kind == "imagefolder":
        labels = _check_image_folder(source, args.criterion, info.needs_labels)
    if args.criterion == _SCORES_LABELS and args.num_classes is not None and labels > args.num_classes:
        raise too_many_classes(source, labels, args.num_classes)
    if source.kind == "cifar10" and not args.download and \
            not (Path(source.directory).expanduser() / "cifar-10-batches-py").is_dir():
        raise CLIError(f"--data {source}: no cifar-10-batches-py/ folder in {source.directory}; add --download")


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


def validate(args: argparse.Namespace) -> Plan:
    """Check every argument, the values first, then the paths (looked up, never read). Raises :class:`CLIError`
    with one line; nothing is built, read or written."""
    source, latency = _check_values(args)
    saved = _check_model(args)
    if source is not None:
        _check_data(args, source, get_importance_info(args.criterion))
    _check_writable(args.out, "--out")
    _check_writable(args.json, "--json")
    return Plan(source, latency, saved)
