"""Registry of importance criteria by name, in timm's style (``list_models`` / ``create_model``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch_pruning as tp

__all__ = [
    "ImportanceInfo",
    "register_importance",
    "list_importances",
    "get_importance_info",
    "create_importance",
]


@dataclass(frozen=True)
class ImportanceInfo:
    """What a criterion is and what it needs.

    Attributes:
        name: registry name (``"channel-similarity-entropy"``).
        factory: class or callable returning a ``tp.importance.Importance``.
        paper: citation of the method.
        description: one-line formula.
        source: ``"entropy-importance"`` or ``"torch-pruning"`` (Torch-Pruning built-ins, for comparison).
        defaults: keyword arguments applied before the caller's.
    """

    name: str
    factory: Callable[..., Any]
    paper: str
    description: str
    source: str = "entropy-importance"
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def requirements(self):
        """What scoring needs (data, labels, gradients), from the one table
        :data:`entropy_importance.calibration.REQUIREMENTS`."""
        from ..calibration.refresh import requirements

        factory = self.factory
        return requirements(factory if isinstance(factory, type) else factory(**self.defaults))

    @property
    def needs_data(self) -> bool:
        """Scoring needs calibration data."""
        return self.requirements.data

    @property
    def needs_labels(self) -> bool:
        """Calibration data must carry class labels."""
        return self.requirements.labels

    @property
    def needs_grad(self) -> bool:
        """Scoring needs gradients left by a backward pass."""
        return self.requirements.grad


_REGISTRY: dict[str, ImportanceInfo] = {}


def register_importance(info: ImportanceInfo, overwrite: bool = False) -> ImportanceInfo:
    """Add a criterion; re-registering a name raises unless ``overwrite=True``."""
    if info.name in _REGISTRY and not overwrite:
        raise ValueError(f"importance {info.name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[info.name] = info
    return info


def list_importances(pattern: str = "*", source: str | None = None) -> list[str]:
    """Sorted names matching the shell-style ``pattern``, optionally only those of one ``source``."""
    return sorted(
        name for name, info in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (source is None or info.source == source)
    )


def get_importance_info(name: str) -> ImportanceInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown importance {name!r}; known: {', '.join(list_importances())}"
        ) from None


def create_importance(name_or_class_or_instance: Any, **kwargs: Any) -> tp.importance.Importance:
    """Build a criterion from a registry name, a class (or factory), or pass an instance through.

    Keyword arguments go to the constructor (after the registry's defaults); passing them with an
    instance is an error, since they could not be applied.
    """
    obj = name_or_class_or_instance
    if isinstance(obj, tp.importance.Importance):
        if kwargs:
            raise TypeError(f"keyword arguments {sorted(kwargs)} cannot be applied to an existing instance")
        return obj
    if isinstance(obj, str):
        info = get_importance_info(obj)
        return info.factory(**{**info.defaults, **kwargs})
    if callable(obj):
        imp = obj(**kwargs)
        if not isinstance(imp, tp.importance.Importance):
            raise TypeError(f"{obj!r} did not return a torch_pruning Importance (got {type(imp).__name__})")
        return imp
    raise TypeError(f"expected a registry name, an Importance class or instance, got {type(obj).__name__}")


def _register_builtins() -> None:
    from .channel_similarity import ChannelSimilarityEntropyImportance
    from .conditional_entropy import ConditionalEntropyImportance
    from .feature_map_entropy import FeatureMapEntropyImportance
    from .gap_entropy import GAPEntropyImportance
    from .information_capacity import InformationCapacityImportance

    register_importance(ImportanceInfo(
        "channel-similarity-entropy", ChannelSimilarityEntropyImportance,
        paper="Geng & Niu, Computer Engineering 50(7):133-143, 2024 (FEC)",
        description="H_i = kernel entropy of the similarity of filter i's mean-compressed channels",
    ))
    register_importance(ImportanceInfo(
        "information-capacity", InformationCapacityImportance,
        paper="Tang et al., arXiv:2303.03645, IEEE TNNLS 2025",
        description="s_i = minmax(H(hist W_i)) + sigma * minmax(mean_j ||W_i - W_j||)",
    ))
    register_importance(ImportanceInfo(
        "gap-entropy", GAPEntropyImportance,
        paper="Luo & Wu, arXiv:1706.05791, 2017",
        description="H_j = entropy over images of channel j's global-average-pooled response",
    ))
    register_importance(ImportanceInfo(
        "feature-map-entropy", FeatureMapEntropyImportance,
        paper="Li et al., ICANN 2019 (EFP)",
        description="s_j = mean over images of the spatial histogram entropy of feature map j",
    ))
    register_importance(ImportanceInfo(
        "conditional-entropy", ConditionalEntropyImportance,
        paper="Min et al., arXiv:1809.02220, 2018 (2PFPCE)",
        description="s_j = I(Y; Z_j) = H(Y) - H(Y | Z_j), Z_j the binned GAP response, Y the label",
    ))

    imp = tp.importance
    tp_paper = "Fang et al., DepGraph, CVPR 2023 (Torch-Pruning)"
    for name, factory, paper, description, defaults in (
        ("tp-magnitude-l1", imp.GroupMagnitudeImportance, tp_paper, "group L1 norm", {"p": 1}),
        ("tp-magnitude-l2", imp.GroupMagnitudeImportance, tp_paper, "group L2 norm", {"p": 2}),
        ("tp-fpgm", imp.FPGMImportance, "He et al., CVPR 2019", "distance to the geometric median", {}),
        ("tp-lamp", imp.LAMPImportance, "Lee et al., ICLR 2021", "layer-adaptive magnitude", {}),
        ("tp-bn-scale", imp.BNScaleImportance, "Liu et al., ICCV 2017", "|gamma| of BatchNorm", {}),
        ("tp-random", imp.RandomImportance, "-", "uniform random scores", {}),
        ("tp-taylor", imp.GroupTaylorImportance, "Molchanov et al., CVPR 2019", "|w * dL/dw|", {}),
        ("tp-activation", imp.ActivationImportance, tp_paper, "mean |input activation| of the next layer", {}),
    ):
        register_importance(ImportanceInfo(name, factory, paper, description, source="torch-pruning",
                                           defaults=defaults))


_register_builtins()
