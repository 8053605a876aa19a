"""Pipelines by name, in the registry style of the criteria."""

from __future__ import annotations

import fnmatch
from typing import Any

from .base import Pipeline
from .efp import EFPPipeline
from .layer_by_layer import FECPipeline, LuoWuPipeline
from .tang import TangPipeline
from .two_phase import TwoPhasePipeline

__all__ = ["register_pipeline", "list_pipelines", "create_pipeline"]

_PIPELINES: dict[str, type[Pipeline]] = {}


def register_pipeline(cls: type[Pipeline], overwrite: bool = False) -> type[Pipeline]:
    """Add a pipeline class under ``cls.name``; re-registering a name raises unless ``overwrite=True``."""
    if cls.name in _PIPELINES and not overwrite:
        raise ValueError(f"pipeline {cls.name!r} is already registered (pass overwrite=True to replace it)")
    _PIPELINES[cls.name] = cls
    return cls


def list_pipelines(pattern: str = "*") -> list[str]:
    return sorted(n for n in _PIPELINES if fnmatch.fnmatch(n, pattern))


def create_pipeline(name: str, **options: Any) -> Pipeline:
    """``create_pipeline("efp", alpha=0.8, rounds=4)``; ``importance=`` takes any registered criterion."""
    try:
        cls = _PIPELINES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline {name!r}; known: {', '.join(list_pipelines())}") from None
    return cls(**options)


for _cls in (LuoWuPipeline, EFPPipeline, FECPipeline, TangPipeline, TwoPhasePipeline):
    register_pipeline(_cls)
