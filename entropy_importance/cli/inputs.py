"""What ``entropy-prune`` prunes: the model (new, pretrained, from a checkpoint or a saved pruned model) and the
calibration batches (from ``--data``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..criteria.registry import get_importance_info
from ..data import DataError, calibration_batches, cifar10, fashion_mnist, image_folder, model_transform
from ..models import create_model
from ..serialization import load_pruned, pruning_record
from .arguments import CLIError, DataSource, model_kwargs

__all__ = ["LoadedModel", "load_model", "load_calibration"]


@dataclass
class LoadedModel:
    model: nn.Module
    input_size: tuple[int, int, int]
    weights: str  # "random", "pretrained", "checkpoint" or "saved"


def _default_input_size(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(size) if size else (3, 224, 224)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_saved(args: argparse.Namespace) -> LoadedModel:
    try:
        model = load_pruned(args.model)
    except ValueError as e:
        raise CLIError(_first_line(e)) from None
    shape = pruning_record(model).inputs.get("shape", [1, 3, 224, 224])
    return LoadedModel(model, tuple(args.input_size or shape[1:]), "saved")


def _build(args: argparse.Namespace) -> nn.Module:
    kwargs = model_kwargs(args)
    model = create_model(args.model, num_classes=args.num_classes, pretrained=args.pretrained, **kwargs)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if args.input_size and tuple(args.input_size) != _default_input_size(model) and args.model.startswith("timm:") \
            and cfg.get("fixed_input_size") and "img_size" not in kwargs:
        # a ViT-like model whose position embedding fixes the input size: build it for the size asked for
        # (timm resamples pretrained position embeddings to it)
        model = create_model(args.model, num_classes=args.num_classes, pretrained=args.pretrained,
                             img_size=args.input_size[1], **kwargs)
    return model


def _load_checkpoint(model: nn.Module, path: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line
        raise CLIError(f"--checkpoint {path}: cannot read ({_first_line(e)})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CLIError(f"--checkpoint {path}: not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CLIError(f"--checkpoint {path} does not fit the model: {_first_line(e)}") from None


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model to prune, in eval mode on CPU, with the input size it is pruned at."""
    if Path(args.model).is_file():
        loaded = _load_saved(args)
    else:
        if ":" not in args.model:
            raise CLIError(f"model {args.model!r} is neither a file nor 'timm:NAME' / 'torchvision:NAME'")
        try:
            model = _build(args)
        except (ValueError, TypeError) as e:
            raise CLIError(_first_line(e)) from None
        loaded = LoadedModel(model, tuple(args.input_size or _default_input_size(model)),
                             "pretrained" if args.pretrained else "random")
        if args.checkpoint:
            _load_checkpoint(model, args.checkpoint)
            loaded.weights = "checkpoint"
    loaded.model.eval()
    return loaded


def _fashion_mnist(batches: int, batch_size: int, input_size: tuple[int, int, int]) -> list:
    images, labels = fashion_mnist("train", limit=batch_size * batches, channels=input_size[0]).tensors
    if images.shape[-2:] != tuple(input_size[1:]):
        images = F.interpolate(images, size=tuple(input_size[1:]), mode="bilinear", align_corners=False)
    return list(zip(images.split(batch_size), labels.split(batch_size), strict=True))


def _output_classes(model: nn.Module) -> int | None:
    classes = getattr(model, "num_classes", None)
    return classes if isinstance(classes, int) and classes > 0 else None


def _check_labels(batches: list, source: DataSource, criterion: str, model: nn.Module) -> None:
    labels = torch.cat([y for _, y in batches])
    if (labels < 0).any():
        raise CLIError(f"criterion {criterion!r} needs class labels, and {source} has no class subfolders: put one "
                       "subfolder of images per class in it")
    found = int(labels.max()) + 1
    classes = _output_classes(model)
    if classes is not None and found > classes and criterion == "tp-taylor":
        raise CLIError(f"{source} has {found} classes, the model's classifier {classes}: Taylor scores need labels "
                       "the classifier can score (--num-classes, or data with fewer classes)")
    if len(labels.unique()) < 2:
        raise CLIError(f"criterion {criterion!r} compares classes, and the calibration images of {source} are all "
                       "of one class: use images of at least two classes (more --calibration-batches, or more "
                       "class subfolders)")


def load_calibration(args: argparse.Namespace, source: DataSource, loaded: LoadedModel, progress: bool) -> list:
    """``--calibration-batches`` batches of ``--batch-size`` images of ``source`` as ``(images, labels)``,
    preprocessed for the model (Fashion-MNIST: normalised and resized)."""
    size = loaded.input_size
    try:
        if source.kind == "fashion-mnist":
            batches = _fashion_mnist(args.calibration_batches, args.batch_size, size)
        else:
            transform = model_transform(loaded.model, size)
            dataset = image_folder(source.directory, transform) if source.kind == "imagefolder" else \
                cifar10(source.directory, transform, download=args.download)
            batches = calibration_batches(dataset, args.calibration_batches, args.batch_size, progress=progress)
    except (DataError, FileNotFoundError) as e:
        raise CLIError(f"--data {source}: {_first_line(e)}") from None
    if get_importance_info(args.criterion).needs_labels:
        _check_labels(batches, source, args.criterion, loaded.model)
    return batches
