"""Building timm and torchvision models by name, and knowing afterwards what a model was built from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from .messages import first_line

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


def _weights_cache(source: str) -> str:
    if source == "timm":
        try:
            from huggingface_hub.constants import HF_HUB_CACHE

            return str(HF_HUB_CACHE)
        except ImportError:  # pragma: no cover - timm depends on huggingface_hub
            pass
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _pretrained_error(spec: str, error: Exception) -> ValueError:
    source = spec.partition(":")[0]
    return ValueError(f"pretrained weights of {spec} could not be loaded ({first_line(error, 160)}); they are "
                      f"downloaded once into {_weights_cache(source)}: connect to the internet once, or load a state "
                      "dict with --checkpoint FILE instead")


def create_model(spec: str, num_classes: int | None = None, pretrained: bool = False, **model_kwargs) -> nn.Module:
    """Build ``timm:NAME`` or ``torchvision:NAME``, with random weights unless ``pretrained``.

    ``pretrained=True`` loads the library's own default weights through its own loader and cache (timm: the
    Hugging Face hub cache, or ``pretrained_cfg_overlay=dict(file=PATH)`` for a local file; torchvision:
    ``weights="DEFAULT"`` into ``torch.hub.get_dir()``). ``model_kwargs`` go to the model's constructor (e.g.
    ``img_size=64`` for a timm ViT). The model remembers what it was built from (:func:`build_spec`), so that a
    pruned copy can be saved and rebuilt by name.

    Raises:
        ValueError: unknown source or model name; pretrained weights that cannot be had (the message names the
            cache and the alternative).
    """
    source, _, name = spec.partition(":")
    kwargs = dict(model_kwargs) if num_classes is None else {**model_kwargs, "num_classes": num_classes}
    if source == "timm":
        import timm

        if name not in timm.list_models():
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
        if pretrained and not timm.is_model_pretrained(name) and "pretrained_cfg_overlay" not in kwargs:
            raise ValueError(f"timm has no pretrained weights for {name!r}; drop --pretrained or pass --checkpoint")
        try:
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError, ConnectionError) as e:
            if not pretrained:
                raise
            raise _pretrained_error(spec, e) from None
    elif source == "torchvision":
        import torchvision

        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from None
        if name.startswith(_DETECTORS):
            kwargs.setdefault("weights_backbone", None)
        if pretrained:
            try:
                model = builder(weights="DEFAULT", **kwargs)
            except (OSError, RuntimeError, ConnectionError) as e:
                raise _pretrained_error(spec, e) from None
            except ValueError as e:  # e.g. num_classes that does not fit the weights
                raise ValueError(f"{spec} with pretrained weights: {first_line(e)}") from None
        else:
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
