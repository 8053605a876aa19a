"""Repairs of Torch-Pruning 1.6 where its dependency graph goes wrong, as one context manager: :func:`repairs`."""

from .group_search import get_pruning_group
from .memory_format import guard_strided_1x1_convs, memory_format_of, needs_nchw_guard, restore_memory_format
from .parameters import all_parameters_trainable, per_output_parameters
from .patching import GROUP_TIME_LIMIT, REPAIRED, repairs
from .state import GroupFormationTimeout, active

__all__ = ["repairs", "REPAIRED", "GROUP_TIME_LIMIT", "GroupFormationTimeout", "active", "get_pruning_group",
           "per_output_parameters", "all_parameters_trainable", "memory_format_of", "restore_memory_format",
           "guard_strided_1x1_convs", "needs_nchw_guard"]
