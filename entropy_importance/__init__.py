"""Entropy-based filter-pruning criteria as Torch-Pruning ``Importance`` classes."""

from importlib.metadata import PackageNotFoundError, version

from . import estimators
from .base import ChannelScoreImportance
from .calibration import (
    CalibrationError,
    DataDrivenImportance,
    NotCalibratedError,
    StaleStatisticsError,
)
from .channel_similarity import ChannelSimilarityEntropyImportance
from .channels import ChannelView, channel_view
from .conditional_entropy import ConditionalEntropyImportance
from .feature_map_entropy import FeatureMapEntropyImportance
from .gap_entropy import GAPEntropyImportance
from .information_capacity import InformationCapacityImportance
from .prune import PruneReport, prune
from .pruner import EntropyPruner
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
    "DataDrivenImportance",
    "ChannelSimilarityEntropyImportance",
    "InformationCapacityImportance",
    "GAPEntropyImportance",
    "FeatureMapEntropyImportance",
    "ConditionalEntropyImportance",
    "EntropyPruner",
    "prune",
    "PruneReport",
    "CalibrationError",
    "NotCalibratedError",
    "StaleStatisticsError",
    "ChannelView",
    "channel_view",
    "ImportanceInfo",
    "create_importance",
    "get_importance_info",
    "list_importances",
    "register_importance",
]
