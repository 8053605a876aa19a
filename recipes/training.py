"""Train, fine-tune and evaluate the CIFAR-style benchmark networks on Fashion-MNIST, on a CPU.

The data is Fashion-MNIST from local IDX files (``entropy_importance.data.fashion_mnist``: 28x28 padded to 32x32,
replicated to 3 channels). A validation split is held out of the 60 000 training images with a fixed seed, so
that ablations can choose defaults without ever looking at the test set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from entropy_importance.data import fashion_mnist
from entropy_importance.serialization import atomic_write
from recipes.cifar_models import resnet56, vgg16_bn

__all__ = ["Split", "Splits", "load_splits", "batches", "train", "evaluate", "recalibrate_batchnorm", "trained_model",
           "ARCHITECTURES"]

ARCHITECTURES = {"resnet56": resnet56, "vgg16": vgg16_bn}
VALIDATION_SEED = 1234


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.x[:n], self.y[:n])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split


def load_splits(val_size: int = 5000, train_limit: int | None = None, val_limit: int | None = None,
                test_limit: int | None = None) -> Splits:
    """Training images minus a held-out validation split (fixed seed), and the test set; ``*_limit`` keep the
    first images of a split (for quick runs)."""
    x, y = fashion_mnist("train").tensors
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    val, train = order[:val_size], order[val_size:]
    test = Split(*fashion_mnist("test").tensors)
    return Splits(Split(x[train], y[train]).head(train_limit), Split(x[val], y[val]).head(val_limit),
                  test.head(test_limit))


def batches(split: Split, batch_size: int, seed: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Mini-batches of ``split``; shuffled when ``seed`` is given."""
    n = len(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if seed is not None else None
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size] if order is not None else slice(i, i + batch_size)
        yield split.x[idx], split.y[idx]


def _fast(model: nn.Module) -> nn.Module:
    # channels_last made CPU convolutions about 1.4x faster, but fine-tuning a channels_last model between the
    # stages of a layer-by-layer prune aborted in the backward pass (glibc "double free", then a segfault: twice
    # in benchmarks.pipelines on ResNet-56, 2026-11-22; the same run without channels_last completes). Until the
    # cause is isolated, the benchmarks train in the default memory format.
    return model


def train(model: nn.Module, split: Split, epochs: float, lr: float, seed: int, batch_size: int = 128,
          weight_decay: float = 5e-4, warmup: bool = True, desc: str = "train") -> nn.Module:
    """SGD (momentum 0.9, Nesterov) with random horizontal flips; one-cycle schedule from scratch
    (``warmup=True``) or cosine decay from ``lr`` for fine-tuning. ``epochs`` may be fractional."""
    model = _fast(model).train()
    steps = max(1, math.ceil(epochs * len(split) / batch_size))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps) if warmup
             else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps))
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=steps, desc=desc, unit="step", leave=False)
    done, epoch = 0, 0
    while done < steps:
        for x, y in batches(split, batch_size, seed=seed * 1000 + epoch):
            if done == steps:
                break
            flip = torch.rand(len(y), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x).contiguous()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            bar.update()
        epoch += 1
    bar.close()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    model = _fast(model).eval()
    correct = 0
    for x, y in batches(split, batch_size):
        correct += (model(x.contiguous()).argmax(1) == y).sum().item()
    return 100.0 * correct / len(split)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: list) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``data`` (no gradient, no weight change): after pruning, the
    statistics of every layer downstream of a removed channel are stale. Cumulative average over the batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model = _fast(model).train()
    for x, _ in data:
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
