"""What ``entropy-prune`` prunes: the model (new, pretrained, from a checkpoint or a saved pruned model) and the
calibration batches (from ``--data``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import CheckpointError, load_checkpoint, read_state_dict
from ..criteria.registry import get_importance_info
from ..data import DataError, calibration_batches, cifar10, fashion_mnist, image_folder, model_transform
from ..messages import first_line
from ..models import create_model
from ..serialization import load_pruned, pruning_record
from .arguments import CLIError, DataSource, model_kwargs
from .checks import Plan, no_class_folders, one_class, too_many_classes

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


def _load_saved(args: argparse.Namespace) -> LoadedModel:
    try:
        model = load_pruned(args.model)
    except ValueError as e:
        raise CLIError(first_line(e)) from None
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


def _what(args: argparse.Namespace) -> str:
    return args.model if args.num_classes is None else f"{args.model} with {args.num_classes} classes"


def load_model(args: argparse.Namespace, plan: Plan) -> LoadedModel:
    """The model to prune, in eval mode on CPU, with the input size it is pruned at. A ``--checkpoint`` is read
    before the model is built (a file that is no state dict costs no model build)."""
    if plan.saved_model:
        loaded = _load_saved(args)
    else:
        try:
            state = read_state_dict(args.checkpoint) if args.checkpoint else None
        except CheckpointError as e:
            raise CLIError(str(e)) from None
        try:
            model = _build(args)
        except (ValueError, TypeError) as e:
            raise CLIError(first_line(e)) from None
        loaded = LoadedModel(model, tuple(args.input_size or _default_input_size(model)),
                             "pretrained" if args.pretrained else "random")
        if state is not None:
            try:
                load_checkpoint(model, state, _what(args), path=args.checkpoint)
            except CheckpointError as e:
                raise CLIError(str(e)) from None
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
        raise no_class_folders(criterion, source)
    found = int(labels.max()) + 1
    classes = _output_classes(model)
    if classes is not None and found > classes and criterion == "tp-taylor":
        raise too_many_classes(source, found, classes)
    if len(labels.unique()) < 2:
        raise one_class(criterion, source)


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
        raise CLIError(f"--data {source}: {first_line(e)}") from None
    if get_importance_info(args.criterion).needs_labels:
        _check_labels(batches, source, args.criterion, loaded.model)
    return batches
