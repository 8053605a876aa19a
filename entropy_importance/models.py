"""Building models by name and the per-model configuration Torch-Pruning needs (heads, classifiers)."""

from __future__ import annotations

import weakref

import torch.nn as nn

__all__ = ["create_model", "classifier_layers", "attention_num_heads", "sync_attention_heads"]


def create_model(spec: str, num_classes: int | None = None, **model_kwargs) -> nn.Module:
    """Build ``timm:NAME`` or ``torchvision:NAME`` with random weights (nothing is downloaded).

    ``model_kwargs`` go to the model's constructor (e.g. ``img_size=64`` for a timm ViT).

    Raises:
        ValueError: unknown source or model name.
    """
    source, _, name = spec.partition(":")
    kwargs = dict(model_kwargs) if num_classes is None else {**model_kwargs, "num_classes": num_classes}
    if source == "timm":
        import timm

        if name not in timm.list_models():
            raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
        return timm.create_model(name, pretrained=False, **kwargs)
    if source == "torchvision":
        import torchvision

        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from None
        if name.startswith(("ssd", "fasterrcnn", "retinanet", "fcos", "maskrcnn", "keypointrcnn")):
            kwargs.setdefault("weights_backbone", None)
        return builder(weights=None, **kwargs)
    raise ValueError(f"model spec must look like 'timm:NAME' or 'torchvision:NAME' or be a file, got {spec!r}")


def classifier_layers(model: nn.Module, last_only: bool = False) -> list[nn.Module]:
    """The layers whose output width is fixed by the task: timm's ``get_classifier()``, else torchvision's
    ``fc`` / ``classifier`` / ``head`` / ``heads``, else the last ``nn.Linear``. With ``last_only``, only the last
    conv / linear layer inside that head (VGG's ``classifier[-1]``: the hidden layers of a multi-layer classifier
    are then pruned, as in the VGG recipes of the papers)."""
    heads = _classifier_modules(model)
    if not last_only:
        return heads
    layers = [m for head in heads for m in head.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
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


_FUSED_QKV: weakref.WeakSet = weakref.WeakSet()  # attention modules seen with a fused (q, k, v) projection


def _attention_modules(model: nn.Module):
    for module in model.modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and isinstance(getattr(module, "num_heads", None), int):
            yield module, qkv


def _is_fused_qkv(module: nn.Module, qkv: nn.Linear) -> bool:
    """``qkv`` produces q, k and v for every head: ``3 * num_heads * head_dim`` outputs. Not so for GCViT's global
    attention, whose ``qkv`` produces only k and v (``2 * dim``)."""
    head_dim = getattr(module, "head_dim", None)
    per_head = 3 * module.num_heads
    if isinstance(head_dim, int):
        return qkv.out_features == per_head * head_dim
    return qkv.out_features % per_head == 0


def attention_num_heads(model: nn.Module) -> dict[nn.Module, int]:
    """``{qkv_linear: num_heads}`` for every fused-qkv attention block (timm ViT/DeiT/EVA style), the
    ``num_heads=`` argument of Torch-Pruning's pruners. Call it before pruning: the blocks it finds are the ones
    :func:`sync_attention_heads` keeps consistent afterwards."""
    heads = {}
    for module, qkv in _attention_modules(model):
        if _is_fused_qkv(module, qkv):
            _FUSED_QKV.add(module)
            heads[qkv] = module.num_heads
    return heads


def sync_attention_heads(model: nn.Module) -> None:
    """After pruning head dimensions, make ``head_dim`` / ``attn_dim`` agree with the pruned ``qkv`` width, in
    the fused-qkv blocks that :func:`attention_num_heads` found before pruning.

    ``scale`` is left as trained (the unfused path keeps the original softmax temperature).
    """
    for module, qkv in _attention_modules(model):
        if module not in _FUSED_QKV:
            continue
        head_dim = qkv.out_features // (3 * module.num_heads)
        if hasattr(module, "head_dim"):
            module.head_dim = head_dim
        if hasattr(module, "attn_dim"):
            module.attn_dim = head_dim * module.num_heads
