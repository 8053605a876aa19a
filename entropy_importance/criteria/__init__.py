"""The criteria: per-layer channel scores of the five papers as Torch-Pruning ``Importance`` classes, the one
dispatch table that says which weights belong to a channel, the entropy estimators, and the registry by name."""

from . import estimators
from .base import ChannelScoreImportance
from .channel_similarity import ChannelSimilarityEntropyImportance
from .channels import ChannelView, channel_view
from .conditional_entropy import ConditionalEntropyImportance
from .feature_map_entropy import FeatureMapEntropyImportance
from .gap_entropy import GAPEntropyImportance
from .information_capacity import InformationCapacityImportance
from .registry import ImportanceInfo, create_importance, get_importance_info, list_importances, register_importance

__all__ = [
    "estimators", "ChannelScoreImportance", "ChannelView", "channel_view", "ChannelSimilarityEntropyImportance",
    "InformationCapacityImportance", "GAPEntropyImportance", "FeatureMapEntropyImportance",
    "ConditionalEntropyImportance", "ImportanceInfo", "create_importance", "get_importance_info",
    "list_importances", "register_importance",
]
