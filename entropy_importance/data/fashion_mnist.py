"""Fashion-MNIST as CIFAR-shaped tensors, read from local IDX files.

The files are looked for, in this order, in ``$FASHION_MNIST_ROOT``, where Debian's ``dataset-fashion-mnist`` puts
them (``/usr/share/datasets/fashion-mnist``) and the cache (:func:`cache_dir`), each either flat (``*-ubyte`` or
``*-ubyte.gz``) or in torchvision's ``FashionMNIST/raw/`` layout. Nothing is downloaded unless asked
(:func:`download_fashion_mnist`, or ``download=True``), which uses torchvision's downloader. ``scripts/test`` provisions
the tests' copy through the same functions.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..messages import first_line

__all__ = ["FASHION_MNIST_DIRS", "ROOT_VARIABLE", "cache_dir", "find_fashion_mnist", "download_fashion_mnist",
           "read_idx", "fashion_mnist"]

#: where the Debian package ``dataset-fashion-mnist`` puts the files
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
#: the environment variable naming a folder of one's own that holds the files (looked at first)
ROOT_VARIABLE = "FASHION_MNIST_ROOT"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530
_HOW_TO_GET = ("apt-get install dataset-fashion-mnist, set FASHION_MNIST_ROOT to a folder holding the four IDX "
               "files, or download them (download_fashion_mnist(), fashion_mnist(..., download=True) or scripts/test)")


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
        raw = root / "FashionMNIST" / "raw"  # torchvision's layout
        for candidate in (root / f"{name}.gz", root / name, raw / name, raw / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def cache_dir() -> Path:
    """Where :func:`download_fashion_mnist` puts the files by default: ``$XDG_CACHE_HOME/entropy-importance/
    fashion-mnist`` (``~/.cache/...`` when ``XDG_CACHE_HOME`` is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
    return Path(base) / "entropy-importance" / "fashion-mnist"


def _search_roots(root: str | os.PathLike | None) -> list[Path]:
    explicit = [root, os.environ.get(ROOT_VARIABLE)]
    return [Path(r).expanduser() for r in explicit if r] + [Path(d) for d in FASHION_MNIST_DIRS] + [cache_dir()]


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path | None:
    """The first directory holding the four IDX files among ``root``, ``$FASHION_MNIST_ROOT``, the Debian
    package's :data:`FASHION_MNIST_DIRS` and :func:`cache_dir`; ``None`` when none does."""
    for r in _search_roots(root):
        if all(_locate(n, [r]) for pair in _FILES.values() for n in pair):
            return r
    return None


def download_fashion_mnist(target: str | os.PathLike | None = None) -> Path:
    """Download both splits through torchvision into ``target`` (default ``$FASHION_MNIST_ROOT``, else
    :func:`cache_dir`) unless they are already there, and return the directory :func:`find_fashion_mnist` finds
    them in.

    Raises:
        OSError: the download failed (one line: the downloader's first line and the other ways to get the files).
    """
    import torchvision

    folder = Path(target or os.environ.get(ROOT_VARIABLE) or cache_dir()).expanduser()
    if find_fashion_mnist(folder) == folder:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(folder), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - network, disk and checksum errors all end the same way
        raise OSError(f"Fashion-MNIST could not be downloaded into {folder} ({first_line(e, 160, with_type=True)}): "
                      f"{_HOW_TO_GET}") from None
    if find_fashion_mnist(folder) != folder:
        raise OSError(f"Fashion-MNIST was downloaded into {folder} but its files are incomplete: {_HOW_TO_GET}")
    return folder


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

    The files are found by :func:`find_fashion_mnist` (``root`` first); ``download=True`` downloads them when they
    are not found (into ``root``, else as :func:`download_fashion_mnist`).

    Raises:
        FileNotFoundError: the files are not found (install ``dataset-fashion-mnist``, set
            ``FASHION_MNIST_ROOT``, or pass ``download=True``).
        OSError: ``download=True`` and the download failed.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size < 28:
        raise ValueError(f"size must be >= 28, got {size}")
    directory = find_fashion_mnist(root)
    if directory is None and download:
        directory = download_fashion_mnist(root)
    if directory is None:
        raise FileNotFoundError(f"Fashion-MNIST not found: {_HOW_TO_GET}")
    images_file, labels_file = (_locate(n, [directory]) for n in _FILES[split])
    images = torch.from_numpy(read_idx(images_file).copy())
    labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = (images.float().div_(255) - MEAN) / STD
    pad = size - x.shape[-1]
    x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    x = x.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
    return TensorDataset(x, labels)
