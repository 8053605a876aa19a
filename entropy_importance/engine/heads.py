"""The one rule for the layers whose output width a task fixes (classifiers, detection heads)."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["task_heads", "classifier_layers"]

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def classifier_layers(model: nn.Module, last_only: bool = False) -> list[nn.Module]:
    """The classifier: timm's ``get_classifier()``, else torchvision's ``fc`` / ``classifier`` / ``head`` / ``heads``,
    else the last ``nn.Linear``. With ``last_only``, only the last conv / linear layer inside it (VGG's
    ``classifier[-1]``: the hidden layers of a multi-layer classifier are then pruned, as in the papers' VGGs)."""
    heads = _classifier_modules(model)
    if not last_only:
        return heads
    layers = [m for head in heads for m in head.modules() if isinstance(m, _LAYERS)]
    return layers[-1:] or heads


def _classifier_modules(model: nn.Module) -> list[nn.Module]:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
            return [head]
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return [head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def task_heads(model: nn.Module, last_only: bool = False) -> dict[nn.Module, str]:
    """Layers that must keep their output width, with the reason: the classifier (:func:`classifier_layers`), and
    the detection heads of torchvision detectors (SSD / RetinaNet / FCOS ``head``; Faster / Mask R-CNN
    ``rpn.head`` and ``roi_heads``)."""
    rpn = getattr(model, "rpn", None)
    head = getattr(model, "head", None)
    detector = rpn is not None or hasattr(model, "anchor_generator")
    heads: dict[nn.Module, str] = {}
    if not (detector and isinstance(head, nn.Module)):
        heads.update({m: "classifier" for m in classifier_layers(model, last_only)})
    if rpn is not None and isinstance(getattr(rpn, "head", None), nn.Module):
        heads[rpn.head] = "detection head (region proposal)"
    roi = getattr(model, "roi_heads", None)
    if isinstance(roi, nn.Module):
        heads[roi] = "detection head (RoI)"
    if detector and isinstance(head, nn.Module):
        heads[head] = "detection head"
    return heads
