"""The recipes' networks by name, checkpoints loaded with a clear error when they do not fit."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch.nn as nn
import torchvision

from entropy_importance import checkpoints
from entropy_importance.pipelines import replace_classifier_with_gap

from .cifar_models import resnet56, resnet110, vgg16_bn

__all__ = ["MODELS", "build_model", "load_checkpoint", "apply_transform", "RecipeError"]


class RecipeError(ValueError):
    """Bad input to a recipe run (unknown name, missing data, a checkpoint that does not fit, no CUDA): the CLI prints
    the message on one line and exits with 2."""


_CIFAR: dict[str, Callable[[int], nn.Module]] = {"cifar-vgg16": vgg16_bn, "cifar-resnet56": resnet56,
                                                 "cifar-resnet110": resnet110}
_TORCHVISION = ("vgg16", "resnet34", "resnet50")
_DETECTORS = ("ssd300-vgg16",)
MODELS = (*_CIFAR, *_TORCHVISION, *_DETECTORS)


def build_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """A fresh network: the CIFAR networks of :mod:`recipes.cifar_models`, torchvision's ImageNet models
    (``pretrained``: torchvision's ImageNet weights, downloaded once into torch's cache) or torchvision's SSD300
    (``pretrained``: its ImageNet VGG-16 backbone)."""
    if name in _CIFAR:
        if pretrained:
            raise RecipeError(f"there are no pretrained weights for {name}: train it (the default) or give "
                              "--checkpoint")
        return _CIFAR[name](num_classes)
    if name in _TORCHVISION:
        if pretrained and num_classes != 1000:
            raise RecipeError(f"torchvision's pretrained {name} has 1000 classes, not {num_classes}")
        weights = "DEFAULT" if pretrained else None
        return torchvision.models.get_model(name, weights=weights, num_classes=num_classes)
    if name == "ssd300-vgg16":
        # as torchvision's detection reference: the ImageNet VGG-16 backbone when pretrained, the detector trained
        return torchvision.models.detection.ssd300_vgg16(weights=None, num_classes=num_classes,
                                                         weights_backbone="DEFAULT" if pretrained else None)
    raise RecipeError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def apply_transform(model: nn.Module, transform: str | None) -> nn.Module:
    """The recipe's change of architecture before pruning (a copy), or ``model`` itself."""
    if transform is None:
        return model
    if transform == "gap-classifier":
        return replace_classifier_with_gap(model)
    raise RecipeError(f"unknown transform {transform!r}")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, what: str) -> nn.Module:
    """:func:`entropy_importance.checkpoints.load_checkpoint` (a plain, nested or ``DistributedDataParallel`` state
    dict) with its error as a :class:`RecipeError`, which the recipes' command line prints on one line."""
    try:
        return checkpoints.load_checkpoint(model, path, what)
    except checkpoints.CheckpointError as e:
        raise RecipeError(str(e)) from None
