"""The one training loop of the project (the recipes and the benchmarks): SGD schedules, AMP and channels_last on
CUDA, DistributedDataParallel under ``torchrun``, tqdm progress, a checkpoint every epoch and ``resume``, seeded data
order, optional seeded batch augmentation, deterministic evaluation.

One process per GPU (``torchrun --nproc-per-node N -m recipes run ...``); without ``torchrun`` one process. Every
process holds the same model (DDP keeps them equal), sees its share of each epoch and writes nothing: only rank 0
writes checkpoints and reports.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)
from tqdm import tqdm

from entropy_importance.latency import measure_latency
from entropy_importance.serialization import atomic_write

from .models import RecipeError
from .recipe import Schedule

__all__ = ["Runtime", "Task", "CLASSIFICATION", "FLIPPED_CLASSIFICATION", "horizontal_flips", "fit", "evaluate",
           "latency_ms", "learning_rate", "autocast", "shard"]


@dataclass
class Runtime:
    """Where training runs: the device, this process's rank among ``world`` processes, loader workers."""

    device: torch.device
    rank: int = 0
    world: int = 1
    workers: int = 0
    quiet: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def create(cls, device: str = "cpu", workers: int = 0, quiet: bool = False) -> Runtime:
        """The runtime of this process: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is joined (NCCL
        on CUDA, gloo on CPU) and each process takes GPU ``LOCAL_RANK``.

        Raises:
            RecipeError: CUDA asked for where there is none, or an unknown device.
        """
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise RecipeError(f"unknown device {device!r}: give cpu or cuda") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RecipeError("--device cuda was asked for, but this machine has no CUDA device: use --device cpu")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = 0
        if world > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            rank, world = dist.get_rank(), dist.get_world_size()
            if dev.type == "cuda":
                dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(dev)
        return cls(dev, rank, world, workers, quiet or rank != 0)

    def all_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over all processes (themselves when alone)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.cuda else "cpu")
        dist.all_reduce(t)
        return t.tolist()


def _classification_loss(net: nn.Module, batch, runtime: Runtime) -> torch.Tensor:
    x, y = batch
    x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
    if runtime.cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return F.cross_entropy(net(x), y)


@dataclass(frozen=True)
class Task:
    """What a training step computes: ``loss(net, batch, runtime)`` on a batch the loader built with ``collate``
    (None: PyTorch's default), after ``augment(batch, generator)`` (None: none) with a generator seeded by the run's
    seed and the step, so that a resumed run augments its remaining steps as the uninterrupted one would."""

    name: str
    loss: Callable[[nn.Module, Any, Runtime], torch.Tensor]
    collate: Callable | None = None
    augment: Callable[[Any, torch.Generator], Any] | None = None


def horizontal_flips(batch, generator: torch.Generator):
    """Each image of an ``(images, labels)`` batch mirrored left-right with probability 1/2."""
    x, y = batch
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x), y


#: cross-entropy on ``(images, labels)`` batches
CLASSIFICATION = Task("classification", _classification_loss)
#: the same with random horizontal flips (the benchmarks' Fashion-MNIST tensors, which carry no transform)
FLIPPED_CLASSIFICATION = Task("classification with horizontal flips", _classification_loss, augment=horizontal_flips)


def learning_rate(schedule: Schedule, progress: float, epoch: float) -> float:
    """The factor on ``schedule.lr`` at ``progress`` in [0, 1] of the run (``epoch``: epochs done, for step decay):
    cosine ``(1 + cos(pi t)) / 2``, step ``0.1 ** (milestones passed)``, onecycle a linear warm-up over the first
    30 % then cosine to zero."""
    if schedule.decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule.decay == "step":
        return 0.1 ** sum(epoch >= m for m in schedule.milestones)
    warm = 0.3
    if progress < warm:
        return 0.04 + 0.96 * progress / warm
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warm) / (1 - warm)))


def _batched(dataset: Dataset, sampler: Sampler, batch_size: int, drop_last: bool, runtime: Runtime,
             collate: Callable | None = None) -> DataLoader:
    """``dataset`` in batches of ``sampler``'s order. A ``TensorDataset`` is indexed a whole batch at a time (one
    gather per tensor instead of an item and a stack per image: the same batches, in the same order)."""
    if isinstance(dataset, TensorDataset) and collate is None:
        return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last), batch_size=None,
                          num_workers=runtime.workers, pin_memory=runtime.cuda)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=runtime.workers,
                      pin_memory=runtime.cuda, drop_last=drop_last, persistent_workers=False, collate_fn=collate)


def _loader(dataset: Dataset, batch_size: int, runtime: Runtime, seed: int, epoch: int,
            collate: Callable | None = None) -> DataLoader:
    if runtime.world > 1:
        sampler = DistributedSampler(dataset, runtime.world, runtime.rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
    return _batched(dataset, sampler, batch_size, True, runtime, collate)


def _steps_per_epoch(dataset: Dataset, schedule: Schedule, runtime: Runtime) -> int:
    per_process = len(dataset) // runtime.world
    steps = per_process // schedule.batch_size
    if steps < 1:
        raise RecipeError(f"{len(dataset)} training images are fewer than one batch of {schedule.batch_size} per "
                          f"process ({runtime.world} processes): use more data or a smaller batch")
    return steps


def autocast(runtime: Runtime):
    """bf16 autocast on CUDA, nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if runtime.cuda else torch.autocast("cpu", enabled=False)


def fit(model: nn.Module, dataset: Dataset, schedule: Schedule, runtime: Runtime, *, seed: int = 0,
        checkpoint: str | os.PathLike | None = None, tag: str = "", resume: bool = False,
        desc: str = "train", task: Task = CLASSIFICATION, nesterov: bool = False) -> nn.Module:
    """Train ``model`` in place by ``schedule`` (``task``'s loss, cross-entropy by default; SGD momentum 0.9,
    Nesterov's if ``nesterov``) and return it in eval mode. An epoch is every full batch of ``dataset`` once (the
    last partial batch is dropped); ``schedule.epochs`` may be fractional.

    ``checkpoint``: after every epoch rank 0 writes the model, optimiser and position there (atomically); a run
    ``resume``d with a checkpoint of the same ``tag`` (e.g. the stage it belongs to) continues from it.
    """
    model.to(runtime.device)
    if runtime.cuda:
        model.to(memory_format=torch.channels_last)
    per_epoch = _steps_per_epoch(dataset, schedule, runtime)
    total = schedule.steps if schedule.steps is not None else max(1, math.ceil(schedule.epochs * per_epoch))
    opt = torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=0.9, weight_decay=schedule.weight_decay,
                          nesterov=nesterov)
    step = epoch = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("tag") == tag:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            step, epoch = int(saved["step"]), int(saved["epoch"])
    net = model
    if runtime.world > 1:
        net = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.cuda else None)
    net.train()
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", leave=False, disable=runtime.quiet)
    while step < total:
        for batch in _loader(dataset, schedule.batch_size, runtime, seed, epoch, task.collate):
            if step == total:
                break
            for group in opt.param_groups:
                group["lr"] = schedule.lr * learning_rate(schedule, step / total, step / per_epoch)
            if task.augment is not None:
                batch = task.augment(batch, torch.Generator().manual_seed(seed * 1_000_003 + step))
            with autocast(runtime):
                loss = task.loss(net, batch, runtime)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update()
            if not bar.disable and (step % 50 == 0 or step == total):  # .item() waits for the GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        epoch += 1
        if path is not None and runtime.is_main:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                     "tag": tag}
            atomic_write(path, lambda f, state=state: torch.save(state, f))
    bar.close()
    if runtime.world > 1:
        dist.barrier()
    return model.eval()


def shard(dataset: Dataset, runtime: Runtime) -> Dataset:
    """This process's share of ``dataset`` (every ``world``-th item)."""
    return dataset if runtime.world == 1 else Subset(dataset, range(runtime.rank, len(dataset), runtime.world))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent over all of ``dataset`` (each process scores every ``world``-th image, no image
    twice; the counts are summed), in eval mode, in a fixed order."""
    model.to(runtime.device).eval()
    correct = seen = 0
    part = shard(dataset, runtime)
    for x, y in _batched(part, SequentialSampler(part), batch_size, False, runtime):
        x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        if runtime.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(runtime):
            correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    correct, seen = runtime.all_sum([float(correct), float(seen)])
    return 100.0 * correct / max(seen, 1.0)


def latency_ms(model: nn.Module, size: int, runtime: Runtime, batch: int = 1, repeats: int = 20) -> float:
    """Median wall time of one forward pass of a ``batch x 3 x size x size`` input on the runtime's device, in
    milliseconds (after warm-up; CUDA synchronised; under the runtime's autocast)."""
    model.to(runtime.device)
    with autocast(runtime):
        return measure_latency(model, (3, size, size), batch, runs=repeats, warmup=3, device=runtime.device).median_ms


def batches_of(dataset: Dataset, batch_size: int = 128) -> Iterator:
    """``dataset`` in order, in batches (calibration data for the criteria)."""
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)
