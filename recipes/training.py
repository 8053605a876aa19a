"""Fashion-MNIST splits as tensors, and the benchmarks' shorthands over the one training loop
(:func:`recipes.trainer.fit`): train / fine-tune, evaluate, re-estimate BatchNorm statistics, cached base networks.

The data is Fashion-MNIST from local IDX files (``entropy_importance.data.fashion_mnist``; by default 28x28 padded to
32x32 and replicated to 3 channels for the CIFAR-style networks, ``size=28, channels=1`` for the native ones). A
validation split is held out of the 60 000 training images with a fixed seed, so that choices can be made without
ever looking at the test set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import TensorDataset

from entropy_importance.data import fashion_mnist
from entropy_importance.serialization import atomic_write
from recipes.cifar_models import resnet56, vgg16_bn
from recipes.recipe import Schedule
from recipes.trainer import FLIPPED_CLASSIFICATION, Runtime, fit
from recipes.trainer import evaluate as evaluate_dataset

__all__ = ["Split", "Splits", "load_splits", "batches", "train", "evaluate", "recalibrate_batchnorm", "trained_model",
           "ARCHITECTURES", "cpu_runtime"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"resnet56": resnet56, "vgg16": vgg16_bn}
VALIDATION_SEED = 1234


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.x[:n], self.y[:n])

    def sample(self, n: int, seed: int) -> Split:
        """``n`` images drawn without replacement (seeded)."""
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.x[idx], self.y[idx])

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.x, self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split


def load_splits(val_size: int = 5000, train_limit: int | None = None, val_limit: int | None = None,
                test_limit: int | None = None, size: int = 32, channels: int = 3) -> Splits:
    """Training images minus a held-out validation split (fixed seed), and the test set; ``*_limit`` keep the
    first images of a split (for quick runs)."""
    x, y = fashion_mnist("train", size=size, channels=channels).tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    val, train = order[:val_size], order[val_size:]
    test = Split(*fashion_mnist("test", size=size, channels=channels).tensors)
    return Splits(Split(x[train], y[train]).head(train_limit), Split(x[val], y[val]).head(val_limit),
                  test.head(test_limit))


def batches(split: Split, batch_size: int, seed: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of ``split``; shuffled when ``seed`` is given."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        yield split.x[idx], split.y[idx]


def cpu_runtime(quiet: bool = False) -> Runtime:
    return Runtime(torch.device("cpu"), quiet=quiet)


def train(model: nn.Module, split: Split, epochs: float, lr: float, seed: int, batch_size: int = 128,
          weight_decay: float = 5e-4, warmup: bool = True, desc: str = "train",
          runtime: Runtime | None = None) -> nn.Module:
    """:func:`recipes.trainer.fit` on ``split`` with random horizontal flips: SGD (momentum 0.9, Nesterov), the
    one-cycle schedule from scratch (``warmup=True``) or cosine decay from ``lr`` for fine-tuning. ``epochs`` may be
    fractional."""
    schedule = Schedule(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                        decay="onecycle" if warmup else "cosine")
    return fit(model, split.dataset(), schedule, runtime or cpu_runtime(), seed=seed, desc=desc,
               task=FLIPPED_CLASSIFICATION, nesterov=True)


def evaluate(model: nn.Module, split: Split, batch_size: int = 500, runtime: Runtime | None = None) -> float:
    """Top-1 accuracy in percent (:func:`recipes.trainer.evaluate`)."""
    return evaluate_dataset(model, split.dataset(), runtime or cpu_runtime(quiet=True), batch_size)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: list) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``data`` (no gradient, no weight change): after pruning, the
    statistics of every layer downstream of a removed channel are stale. Cumulative average over the batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(x.contiguous())
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()


def trained_model(arch: str, seed: int, splits: Splits, epochs: float, lr: float, cache: Path) -> nn.Module:
    """The base network for ``seed``, trained once and cached under ``cache``."""
    path = cache / f"{arch}_seed{seed}_e{epochs:g}_n{len(splits.train)}.pt"
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch](num_classes=10)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    train(model, splits.train, epochs, lr, seed, desc=f"train {arch} seed {seed}")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(model.state_dict(), f))
    return model.eval()
