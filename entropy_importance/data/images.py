"""A user's calibration images (an image folder or CIFAR-10), preprocessed the way the model expects.

Preprocessing comes from the model's own libraries: timm's ``resolve_data_config`` + ``create_transform`` for timm
models, the weights' own ``transforms()`` for torchvision models, timm's ImageNet defaults for anything else.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..models import build_spec

__all__ = ["DataError", "model_transform", "image_folder", "cifar10", "calibration_batches", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Calibration images that cannot be used: the message names the folder or file and the fix."""


def _timm_transform(model: nn.Module | None, input_size: tuple[int, int, int]) -> Callable:
    import timm.data

    config = timm.data.resolve_data_config({"input_size": tuple(input_size)}, model=model) if model is not None \
        else timm.data.resolve_data_config({"input_size": tuple(input_size)}, pretrained_cfg={})
    return timm.data.create_transform(**config, is_training=False)


def _torchvision_transform(name: str, input_size: tuple[int, int, int]) -> Callable | None:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None
    make = weights.transforms
    keywords = dict(getattr(make, "keywords", {}) or {})
    if "crop_size" not in keywords:  # detection / segmentation weights: no resizing of their own
        return make()
    crop = keywords["crop_size"]
    resize = keywords.get("resize_size", crop)
    resize = resize[0] if isinstance(resize, (list, tuple)) else resize
    height = input_size[1]
    return make(crop_size=height, resize_size=round(height * resize / crop))


def model_transform(model: nn.Module, input_size: tuple[int, int, int]) -> Callable:
    """The evaluation preprocessing of ``model`` at ``input_size`` (C, H, W): PIL image -> normalised tensor.

    timm models: ``resolve_data_config`` (the model's mean / std / interpolation / crop) at ``input_size``;
    torchvision models built by name: their default weights' ``transforms()`` with the crop scaled to ``H``;
    any other model: timm's ImageNet defaults at ``input_size``.
    """
    spec = build_spec(model)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        return _timm_transform(model, input_size)
    if spec is not None and spec.spec.startswith("torchvision:"):
        transform = _torchvision_transform(spec.spec.partition(":")[2], input_size)
        if transform is not None:
            return transform
    return _timm_transform(None, input_size)


def _open_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable image ({type(e).__name__}): remove or replace it") from None


class _FlatImages(Dataset):
    """The images directly in one folder, unlabelled (label -1)."""

    def __init__(self, files: list[Path], transform: Callable) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(_open_image(str(self.files[index]))), -1


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_folder(directory: str | os.PathLike, transform: Callable) -> Dataset:
    """The images under ``directory``: one subfolder per class (torchvision ``ImageFolder``, labels = class index
    in sorted folder order) or, with no subfolders, the images directly in it (unlabelled: label -1).

    Raises:
        DataError: the folder does not exist or holds no images; an image that cannot be read names its file
            when it is loaded.
    """
    import torchvision

    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and _images_in(p))
    if classes:
        return torchvision.datasets.ImageFolder(str(root), transform=transform, loader=_open_image,
                                                is_valid_file=lambda p: Path(p).suffix.lower() in IMAGE_EXTENSIONS,
                                                allow_empty=True)
    files = _images_in(root)
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS[:3])}, ...): put images "
                        "in it, or one subfolder of images per class")
    return _FlatImages(files, transform)


def cifar10(directory: str | os.PathLike, transform: Callable, download: bool = False, train: bool = True) -> Dataset:
    """CIFAR-10's training (or test) images in ``directory`` (torchvision's ``cifar-10-batches-py`` layout).

    Raises:
        DataError: the files are not there (and ``download`` is off) or are damaged.
    """
    import torchvision

    root = Path(directory).expanduser()
    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise DataError(f"CIFAR-10 is not in {root} (no cifar-10-batches-py/ folder): point at the folder holding "
                        "it, or download it (--download)")
    try:
        return torchvision.datasets.CIFAR10(str(root), train=train, transform=transform, download=download)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, KeyError) as e:
        raise DataError(f"CIFAR-10 in {root} is incomplete or damaged ({str(e).splitlines()[0]}): remove it and "
                        "download it again") from None


def calibration_batches(dataset: Dataset, batches: int, batch_size: int = 32, seed: int = 0,
                        progress: bool = False) -> list:
    """``batches`` batches of ``batch_size`` images of ``dataset`` in a seeded random order, as
    ``(images, labels)`` tuples (fewer when the dataset is smaller), loaded once and kept in memory;
    ``progress`` draws a tqdm bar on stderr."""
    from tqdm import tqdm

    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be >= 1, got {batches} and {batch_size}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    out = []
    total = min(batches, len(loader))
    with tqdm(total=total, desc="loading images", unit="batch", disable=not progress, leave=False) as bar:
        for images, labels in loader:
            out.append((images, labels))
            bar.update()
            if len(out) == batches:
                break
    return out
