"""Fashion-MNIST as CIFAR-shaped tensors, read from local IDX files (Debian's ``dataset-fashion-mnist``).

Nothing is downloaded unless ``download=True`` is passed, which uses torchvision's downloader.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = ["FASHION_MNIST_DIRS", "find_fashion_mnist", "read_idx", "fashion_mnist"]

#: where the Debian package puts the files, then torchvision's layout under ``$FASHION_MNIST_ROOT``.
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0] << 8 | data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _locate(name: str, roots: list[Path]) -> Path | None:
    for root in roots:
        for candidate in (root / f"{name}.gz", root / name, root / "FashionMNIST" / "raw" / name):
            if candidate.is_file():
                return candidate
    return None


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path | None:
    """The directory holding the four IDX files, or ``None``."""
    roots = [Path(r) for r in ([root] if root else []) + [os.environ.get("FASHION_MNIST_ROOT", "")] if r]
    roots += [Path(d) for d in FASHION_MNIST_DIRS]
    for r in roots:
        if all(_locate(n, [r]) for pair in _FILES.values() for n in pair):
            return r
    return None


def fashion_mnist(
    split: str = "train",
    root: str | os.PathLike | None = None,
    size: int = 32,
    channels: int = 3,
    limit: int | None = None,
    download: bool = False,
) -> TensorDataset:
    """Fashion-MNIST ``split`` as a ``TensorDataset`` of normalised ``(channels, size, size)`` float images
    (28x28 zero-padded to ``size``, replicated to ``channels``) and int64 labels.

    Raises:
        FileNotFoundError: the files are not found (install ``dataset-fashion-mnist``, set
            ``FASHION_MNIST_ROOT``, or pass ``download=True``).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_fashion_mnist(root)
    if directory is None and download:
        import torchvision

        target = Path(root or "~/.cache/entropy-importance").expanduser()
        torchvision.datasets.FashionMNIST(str(target), train=split == "train", download=True)
        directory = find_fashion_mnist(target)
    if directory is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found: `apt-get install dataset-fashion-mnist`, set FASHION_MNIST_ROOT, "
            "or call fashion_mnist(..., download=True)"
        )
    images_file, labels_file = (_locate(n, [directory]) for n in _FILES[split])
    images = torch.from_numpy(read_idx(images_file).copy())
    labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.float().div_(255) - MEAN) / STD
    pad = size - x.shape[-1]
    if pad < 0:
        raise ValueError(f"size must be >= 28, got {size}")
    x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    x = x.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
    return TensorDataset(x, labels)
