"""Building timm and torchvision models by name, and knowing afterwards what a model was built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

__all__ = ["BuildSpec", "create_model", "build_spec"]

_ATTRIBUTE = "_entropy_importance_build"  # set on models built by create_model (survives deepcopy)
_DETECTORS = ("ssd", "fasterrcnn", "retinanet", "fcos", "maskrcnn", "keypointrcnn")


@dataclass
class BuildSpec:
    """How to build a model again: ``create_model(spec, num_classes, **model_kwargs)``."""

    spec: str
    num_classes: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return create_model(self.spec, num_classes=self.num_classes, **self.model_kwargs)


def create_model(spec: str, num_classes: int | None = None, **model_kwargs) -> nn.Module:
    """Build ``timm:NAME`` or ``torchvision:NAME`` with random weights (nothing is downloaded).

    ``model_kwargs`` go to the model's constructor (e.g. ``img_size=64`` for a timm ViT). The model remembers what
    it was built from (:func:`build_spec`), so that a pruned copy can be saved and rebuilt by name.

    Raises:
        ValueError: unknown source or model name.
    """
    source, _, name = spec.partition(":")
    kwargs = dict(model_kwargs) if num_classes is None else {**model_kwargs, "num_classes": num_classes}
    if source == "timm":
        import timm

        if name not in timm.list_models():
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
        model = timm.create_model(name, pretrained=False, **kwargs)
    elif source == "torchvision":
        import torchvision

        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from None
        if name.startswith(_DETECTORS):
            kwargs.setdefault("weights_backbone", None)
        model = builder(weights=None, **kwargs)
    else:
        raise ValueError(f"model spec must look like 'timm:NAME' or 'torchvision:NAME' or be a file, got {spec!r}")
    object.__setattr__(model, _ATTRIBUTE, BuildSpec(spec, num_classes, dict(model_kwargs)))
    return model


def build_spec(model: nn.Module) -> BuildSpec | None:
    """What ``model`` was built from: recorded by :func:`create_model`, else, for a timm model, its architecture
    name and class count (other constructor arguments, such as ``img_size``, cannot be read back and are checked
    when the model is rebuilt); None when unknown (a model of your own: pass it as ``base_model`` when loading)."""
    found = getattr(model, _ATTRIBUTE, None)
    if isinstance(found, BuildSpec):
        return found
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture") and isinstance(getattr(model, "num_classes", None), int):
        return BuildSpec(f"timm:{cfg['architecture']}", model.num_classes)
    return None
