"""The CIFAR-style ResNet-56 setting (32x32 Fashion-MNIST, 3 channels) that ``benchmarks.pipelines`` runs on: its
base-network schedule, calibration batches and fine-tune budget (the former ``benchmarks.compare`` settings; the
criteria comparison itself is ``benchmarks.quality``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from recipes.training import Splits, batches

__all__ = ["Config", "QUICK", "FULL", "calibration_batches"]


@dataclass
class Config:
    archs: list[str]
    seeds: list[int]
    train_limit: int | None
    val_limit: int | None
    test_limit: int | None
    epochs: float
    lr: float = 0.1
    speed_ups: list[float] = field(default_factory=lambda: [2.0, 3.0])
    calibration_batches: int = 4
    calibration_batch_size: int = 64
    finetune_images: int | None = 4000   # per fine-tune (None: the whole training split)
    finetune_epochs: float = 1.0
    finetune_lr: float = 0.01


QUICK = Config(archs=["resnet56"], seeds=[0], train_limit=20000, val_limit=2000, test_limit=2000, epochs=2)
FULL = Config(archs=["resnet56", "vgg16"], seeds=[0, 1, 2], train_limit=None, val_limit=None, test_limit=None,
              epochs=15, calibration_batches=8, finetune_images=None, finetune_epochs=2)


def calibration_batches(splits: Splits, cfg: Config, seed: int) -> list:
    """The same calibration batches for every method: a seeded sample of the training split."""
    n = cfg.calibration_batches * cfg.calibration_batch_size
    return list(batches(splits.train.sample(n, seed + 7), cfg.calibration_batch_size))
