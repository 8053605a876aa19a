"""The recipes' datasets: torchvision CIFAR-10, ImageNet as an image folder, Fashion-MNIST from the local Debian
package (resized, 3 channels). Each gives a training set (augmented), a validation split held out of the training
images (for the stage metrics), the test set and calibration images (no augmentation)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from entropy_importance.data import DataError, cifar10, fashion_mnist

from .models import RecipeError

__all__ = ["DATASETS", "RecipeData", "held_out", "load_data", "synthetic_calibration"]

DATASETS = ("cifar10", "imagenet", "fashion-mnist")
_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_SPLIT_SEED = 1234


@dataclass
class RecipeData:
    train: Dataset
    val: Dataset
    test: Dataset
    calibration: Dataset
    num_classes: int


def held_out(n: int, val_images: int, calibration_images: int) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / calibration indices of ``n`` training images (fixed seed; calibration images are
    training images, never validation ones)."""
    if val_images >= n:
        raise RecipeError(f"the training set has {n} images, fewer than the {val_images} held out for validation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED)).tolist()
    val, train = order[:val_images], order[val_images:]
    return train, val, train[:calibration_images]


def _cifar10(root: Path, download: bool):
    from torchvision import transforms as T

    norm = T.Normalize(_CIFAR_MEAN, _CIFAR_STD)
    augment = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    plain = T.Compose([T.ToTensor(), norm])
    try:
        return (cifar10(root, augment, download), cifar10(root, plain, download), cifar10(root, plain, download, False),
                10)
    except DataError as e:
        raise RecipeError(str(e).replace("(--download)", "(--download), or give --data-dir DIR")) from None


def _image_folder(root: Path, size: int):
    import timm.data
    import torchvision

    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise RecipeError(f"{folder} does not exist: ImageNet is read as an image folder with train/ and val/ "
                              "holding one subfolder of images per class (give --data-dir)")
        if not any(p.is_dir() and any(p.iterdir()) for p in folder.iterdir()):
            raise RecipeError(f"{folder} holds no class subfolder with images: put one folder of images per class "
                              "there")
    augment = timm.data.create_transform(size, is_training=True)
    plain = timm.data.create_transform(size, is_training=False)
    make = lambda split, tf: torchvision.datasets.ImageFolder(str(root / split), transform=tf)  # noqa: E731
    train = make("train", augment)
    return train, make("train", plain), make("val", plain), len(train.classes)


def _fashion_mnist(size: int, root: str | None, limit: int | None, test_limit: int | None):
    try:
        train, test = fashion_mnist("train", root, size=28, limit=limit), \
            fashion_mnist("test", root, size=28, limit=test_limit)
    except FileNotFoundError as e:
        raise RecipeError(str(e)) from None

    def resized(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        x = F.interpolate(x[:, :1], size=(size, size), mode="bilinear", align_corners=False)
        return TensorDataset(x.expand(-1, 3, -1, -1).contiguous(), y)

    train = resized(train)
    return train, train, resized(test), 10


def load_data(dataset: str, size: int, *, data_dir: str | os.PathLike | None = None, download: bool = False,
              val_images: int = 5000, calibration_images: int = 512, train_limit: int | None = None,
              test_limit: int | None = None) -> RecipeData:
    """The splits of ``dataset`` at ``size`` pixels. ``train_limit`` / ``test_limit`` keep that many images
    (Fashion-MNIST, smoke runs).

    Raises:
        RecipeError: an unknown dataset, or its files are not where they are looked for.
    """
    if dataset == "cifar10":
        root = Path(data_dir or "~/.cache/entropy-importance/cifar10").expanduser()
        augmented, plain, test, classes = _cifar10(root, download)
    elif dataset == "imagenet":
        if data_dir is None:
            raise RecipeError("ImageNet cannot be downloaded: give --data-dir DIR with train/ and val/ image folders")
        if download:
            raise RecipeError("ImageNet cannot be downloaded: drop --download and give --data-dir")
        augmented, plain, test, classes = _image_folder(Path(data_dir).expanduser(), size)
    elif dataset == "fashion-mnist":
        augmented, plain, test, classes = _fashion_mnist(size, str(data_dir) if data_dir else None, train_limit,
                                                         test_limit)
    else:
        raise RecipeError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    train_idx, val_idx, calib_idx = held_out(len(plain), val_images, calibration_images)
    return RecipeData(Subset(augmented, train_idx), Subset(plain, val_idx), test, Subset(plain, calib_idx), classes)


def synthetic_calibration(size: int, num_classes: int, images: int = 64, seed: int = 0) -> list:
    """Seeded Gaussian images with random labels, in batches of 32: what a structure-only run measures data-driven
    criteria on (the structure of a recipe comes from its table or target, not from the scores)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (images,), generator=g)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, images, 32)]
