"""Entropy-based filter-pruning criteria as Torch-Pruning ``Importance`` classes, and an engine that prunes any timm
or torchvision model with them."""

from importlib.metadata import PackageNotFoundError, version

# the criteria first: calibration's data-driven base class builds on them
from .criteria import (
    ChannelScoreImportance,
    ChannelSimilarityEntropyImportance,
    ChannelView,
    ConditionalEntropyImportance,
    FeatureMapEntropyImportance,
    GAPEntropyImportance,
    ImportanceInfo,
    InformationCapacityImportance,
    channel_view,
    create_importance,
    estimators,
    get_importance_info,
    list_importances,
    register_importance,
)

# isort: split
from .calibration import (
    CalibrationError,
    DataDrivenImportance,
    NotCalibratedError,
    StaleStatisticsError,
    requirements,
)
from .engine import Engine, EntropyPruner, PruneReport, prune, task_heads
from .pipelines import create_pipeline, list_pipelines
from .recovery import RecoveryReport, recover
from .repairs import GroupFormationTimeout, repairs
from .serialization import load_pruned, pruning_record, save_pruned

try:
    __version__ = version("entropy-importance")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__", "estimators", "ChannelScoreImportance", "DataDrivenImportance",
    "ChannelSimilarityEntropyImportance", "InformationCapacityImportance", "GAPEntropyImportance",
    "FeatureMapEntropyImportance", "ConditionalEntropyImportance", "EntropyPruner", "Engine", "prune",
    "PruneReport", "task_heads", "repairs", "GroupFormationTimeout", "save_pruned", "load_pruned", "pruning_record",
    "requirements", "CalibrationError", "NotCalibratedError", "StaleStatisticsError", "ChannelView",
    "channel_view", "ImportanceInfo", "create_importance", "get_importance_info", "list_importances",
    "register_importance", "create_pipeline", "list_pipelines", "recover", "RecoveryReport",
]
