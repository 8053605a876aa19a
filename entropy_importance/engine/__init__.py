"""The pruning engine: one place that prunes copies of a model with heads kept, attention configured, breaking
groups isolated, criteria measured and MACs counted; ``prune()`` and ``EntropyPruner`` on top of it."""

from .attention import attention_num_heads, sync_attention_heads
from .counting import Measured, count_macs, count_params, measured_forward, stage_widths, tp_macs
from .engine import Engine, EngineStep, PruneReport
from .heads import classifier_layers, task_heads
from .outputs import batch_size, forward, output_signature
from .prune import prune
from .pruner import EntropyPruner

__all__ = ["Engine", "EngineStep", "PruneReport", "prune", "EntropyPruner", "task_heads", "classifier_layers",
           "attention_num_heads", "sync_attention_heads", "count_params", "count_macs", "tp_macs", "stage_widths",
           "measured_forward", "Measured", "forward", "batch_size", "output_signature"]
