"""Saving and loading pruned models without pickling code.

A saved file is a plain ``torch.save`` dictionary of tensors and built-in types (so ``torch.load`` with
``weights_only=True`` reads it): the base model's spec, Torch-Pruning's pruning history (root layer,
direction, removed indices), the integer attributes of every module (``num_heads``, ``head_dim``, ... that
pruning helpers may have changed), and the pruned ``state_dict``. :func:`load_pruned` rebuilds the base
model, replays the history with ``DependencyGraph.load_pruning_history`` and loads the weights, which gives
back a model whose outputs are identical to the saved one's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn as nn
import torch_pruning as tp

from .models import create_model

__all__ = ["PrunedModelRecord", "save_pruned", "load_pruned", "load_record", "atomic_write", "FORMAT"]

FORMAT = "entropy-importance/pruned-model"
VERSION = 1


@dataclass
class PrunedModelRecord:
    """What is needed to rebuild a pruned model from its base model."""

    spec: str
    input_size: tuple[int, int, int]
    num_classes: int | None = None
    pruning_history: list = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def _int_attributes(model: nn.Module) -> dict[str, dict[str, int]]:
    return {
        name: attrs
        for name, module in model.named_modules()
        if (attrs := {k: v for k, v in vars(module).items() if type(v) is int and not k.startswith("_")})
    }


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``; on any error the
    temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_pruned(path: str | os.PathLike, model: nn.Module, record: PrunedModelRecord) -> None:
    """Write ``model`` (pruned from ``record.spec`` by ``record.pruning_history``) to ``path`` atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": record.spec,
        "input_size": list(record.input_size),
        "num_classes": record.num_classes,
        "model_kwargs": dict(record.model_kwargs),
        "pruning_history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in record.pruning_history],
        "attributes": _int_attributes(model),
        "meta": record.meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_record(path: str | os.PathLike) -> dict:
    """The raw saved dictionary (validated)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pruned model saved by entropy-importance (no {FORMAT!r} header)")
    if payload.get("version", 0) > VERSION:
        raise ValueError(f"{path} was saved by a newer entropy-importance (format {payload['version']})")
    return payload


def load_pruned(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (or by ``entropy-prune --out``), in eval mode.

    Example:
        >>> model = load_pruned("resnet18_pruned.pt")
    """
    model, _ = _rebuild(load_record(path))
    return model.to(map_location)


def _rebuild(payload: dict) -> tuple[nn.Module, PrunedModelRecord]:
    record = PrunedModelRecord(
        spec=payload["spec"], input_size=tuple(payload["input_size"]), num_classes=payload["num_classes"],
        pruning_history=[list(h) for h in payload["pruning_history"]], meta=dict(payload.get("meta", {})),
        model_kwargs=dict(payload.get("model_kwargs", {})),
    )
    model = create_model(record.spec, num_classes=record.num_classes, **record.model_kwargs).eval()
    if record.pruning_history:
        dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, *record.input_size), verbose=False)
        dg.load_pruning_history(record.pruning_history)
    modules = dict(model.named_modules())
    for name, attrs in payload["attributes"].items():
        for key, value in attrs.items():
            setattr(modules[name], key, value)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), record
