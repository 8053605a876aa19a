"""What a recipe is: data (model, dataset, pipeline and its target, schedules, the paper's claims), no code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Schedule", "Claim", "Recipe", "SMOKE"]


@dataclass(frozen=True)
class Schedule:
    """An SGD schedule (momentum 0.9): ``epochs`` at ``lr`` decayed by ``decay`` (``"cosine"``, ``"step"`` with
    x0.1 at each of ``milestones``, or ``"onecycle"`` with warm-up), ``batch_size`` images per step on each process.
    ``steps`` (if given) replaces ``epochs``: that many optimiser steps (smoke runs)."""

    epochs: float
    lr: float
    batch_size: int = 128
    weight_decay: float = 5e-4
    decay: str = "cosine"
    milestones: tuple[float, ...] = ()
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.decay not in ("cosine", "step", "onecycle"):
            raise ValueError(f"decay must be 'cosine', 'step' or 'onecycle', got {self.decay!r}")


@dataclass(frozen=True)
class Claim:
    """A paper's reported result: reductions in percent (``None``: not reported) and the accuracy statement."""

    params: float | None
    macs: float | None
    accuracy: str
    source: str = ""


@dataclass(frozen=True)
class Recipe:
    """One reproduction: ``model`` (a builder name of :mod:`recipes.models`) on ``dataset`` at ``input_size``,
    optionally rebuilt by ``transform`` (``"gap-classifier"``: Luo & Wu's GAP head), pruned by ``pipeline`` (a
    registered pipeline name, with ``pipeline_options``) towards ``target`` (``ratios=`` a per-layer table keyed by
    layer names / glob patterns, or ``speed_up=``), with ``train`` for the base network, ``recovery`` after each
    pruning stage and ``final`` after the last one. ``reading`` says which choices are ours, not the paper's."""

    name: str
    paper: str
    model: str
    dataset: str
    num_classes: int
    input_size: int
    pipeline: str
    target: dict[str, Any]
    claim: Claim
    train: Schedule
    recovery: Schedule | None
    final: Schedule
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    transform: str | None = None
    calibration_images: int = 512
    labels_needed: bool = False
    reading: str = ""
    task: str = "classification"

    @property
    def imagenet_scale(self) -> bool:
        return self.dataset == "imagenet"

    @property
    def metric(self) -> str:
        """What the recipe's accuracy numbers are: top-1 accuracy in percent, or mAP at IoU 0.5 in percent."""
        return "mAP@0.5" if self.task == "detection" else "top-1"


@dataclass(frozen=True)
class SmokeSettings:
    """The smoke run: the recipe end to end on a Fashion-MNIST subset in a few CPU minutes."""

    train_images: int = 2048
    test_images: int = 1000
    batch_size: int = 64
    train_steps: int = 48
    recovery_steps: int = 4
    final_steps: int = 64
    calibration_images: int = 128
    train_lr: float = 0.05
    finetune_lr: float = 0.05
    detection_batch_size: int = 2
    detection_train_steps: int = 4
    detection_final_steps: int = 2
    detection_lr: float = 0.002


SMOKE = SmokeSettings()
