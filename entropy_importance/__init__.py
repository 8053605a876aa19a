"""Entropy-based filter-pruning criteria as Torch-Pruning ``Importance`` classes."""

from importlib.metadata import PackageNotFoundError, version

from . import estimators
from .base import ChannelScoreImportance
from .channel_similarity import ChannelSimilarityEntropyImportance
from .channels import ChannelView, channel_view
from .information_capacity import InformationCapacityImportance
from .registry import (
    ImportanceInfo,
    create_importance,
    get_importance_info,
    list_importances,
    register_importance,
)

try:
    __version__ = version("entropy-importance")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "estimators",
    "ChannelScoreImportance",
    "ChannelSimilarityEntropyImportance",
    "InformationCapacityImportance",
    "ChannelView",
    "channel_view",
    "ImportanceInfo",
    "create_importance",
    "get_importance_info",
    "list_importances",
    "register_importance",
]
