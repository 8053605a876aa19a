"""Detection in the recipes' training engine: the SSD training step (the model's own losses), list batches, and
VOC mAP at IoU 0.5 through torchmetrics' ``MeanAveragePrecision`` (summed over ranks by torchmetrics itself)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .trainer import Runtime, Task, autocast, shard

__all__ = ["DETECTION", "collate_detection", "evaluate_map"]


def collate_detection(samples: list) -> tuple[list, list]:
    """Images of different sizes and their targets stay lists (the detector resizes them itself)."""
    images, targets = zip(*samples, strict=True)
    return list(images), list(targets)


def _to(runtime: Runtime, images: list, targets: list) -> tuple[list, list]:
    images = [im.to(runtime.device, non_blocking=True) for im in images]
    targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(runtime.device),
                "labels": t["labels"].to(runtime.device)} for t in targets]
    return images, targets


def _detection_loss(net: nn.Module, batch, runtime: Runtime) -> torch.Tensor:
    images, targets = _to(runtime, *batch)
    losses = net(images, targets)  # torchvision detectors return their losses in train mode
    return sum(losses.values())


#: a torchvision detector's own losses (SSD: box regression + hard-negative-mined classification) on list batches
DETECTION = Task("detection", _detection_loss, collate_detection)


@torch.no_grad()
def evaluate_map(model: nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int = 8) -> float:
    """Mean average precision at IoU 0.5 over ``dataset`` (torchmetrics ``MeanAveragePrecision(iou_thresholds=
    [0.5])``: every class's precision-recall curve, COCO-style 101-point interpolation), in [0, 1]; each process
    scores every ``world``-th image and torchmetrics gathers the detections."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5], box_format="xyxy", class_metrics=False)
    model.to(runtime.device).eval()
    for images, targets in DataLoader(shard(dataset, runtime), batch_size=batch_size, shuffle=False,
                                      num_workers=runtime.workers, collate_fn=collate_detection):
        images, targets = _to(runtime, images, targets)
        with autocast(runtime):
            detections = model(images)
        metric.update([{k: v.float() if k != "labels" else v for k, v in d.items()} for d in detections], targets)
    value = float(metric.compute()["map"])
    return max(value, 0.0)  # torchmetrics reports -1 when no image has a ground-truth box

