"""The five papers' pruning procedures as pipelines of engine steps, by name: ``create_pipeline("efp", alpha=0.8)``."""

from .base import Pipeline, PipelineReport, Stage, StageReport, prunable_layers, resolve_ratios
from .budget import StageBudget, planned_stages, split_budget
from .classifier import replace_classifier_with_gap
from .efp import EFPPipeline, relative_scores, select_maps
from .freeze import FrozenChannels, freeze_max_entropy
from .layer_by_layer import FECPipeline, LayerByLayerPipeline, LuoWuPipeline
from .registry import create_pipeline, list_pipelines, register_pipeline
from .tang import TangPipeline
from .two_phase import TwoPhasePipeline

__all__ = ["Pipeline", "PipelineReport", "Stage", "StageReport", "create_pipeline", "list_pipelines",
           "register_pipeline", "LayerByLayerPipeline", "LuoWuPipeline", "FECPipeline", "EFPPipeline",
           "TangPipeline", "TwoPhasePipeline",
           "prunable_layers", "resolve_ratios", "select_maps", "freeze_max_entropy", "FrozenChannels",
           "replace_classifier_with_gap", "StageBudget", "split_budget", "planned_stages",
           "relative_scores"]
