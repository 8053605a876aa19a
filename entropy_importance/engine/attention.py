"""Attention heads: the ``num_heads`` Torch-Pruning needs for fused-qkv blocks, and their head widths afterwards."""

from __future__ import annotations

import weakref

import torch.nn as nn

__all__ = ["attention_num_heads", "sync_attention_heads"]


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
