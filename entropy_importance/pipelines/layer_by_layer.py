"""Layer-by-layer pruning (Luo & Wu 2017; FEC's per-layer ratios, pruned backward as in the authors' FSABP)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch.nn as nn

from .base import Pipeline, PipelineContext, layer_widths, prunable_layers, ratio_keeping, resolve_ratios

__all__ = ["LayerByLayerPipeline", "LuoWuPipeline", "FECPipeline"]


class LayerByLayerPipeline(Pipeline):
    """Prune one layer at a time, in network order (``order="forward"``) or from the last layer to the first
    (``"backward"``), each layer's group at its own ratio, with ``finetune(model, stage)`` after each layer (a short
    recovery) and once more at the end (``stage.kind == "final"``: a longer one); ``order="one-shot"`` prunes every
    layer at once, then fine-tunes once.

    The ratio of layer ``l`` comes from ``ratios`` (layer names or glob patterns), else the uniform ``ratio``, and is a
    fraction of the layer's width before the run: a layer whose group was already narrowed to its width through a
    coupled layer (a residual stream is one group, met once per block) is not pruned again, its stage only
    fine-tunes (pruning it again by its ratio of what is left would compound, (1 - r)^blocks). With
    ``speed_up`` the uniform ratio is the smallest whose one-shot prune of the chosen layers reaches that MAC
    speed-up (:meth:`~entropy_importance.Engine.search_ratio`). ``layers`` (names or patterns) restricts which
    layers are pruned (default: every conv / linear layer outside the task heads); a layer's group includes the
    layers coupled to it (a residual stream is one group).

    Args:
        order: ``"forward"``, ``"backward"`` or ``"one-shot"``.
        layers: which layers to prune (names or shell-style patterns); None = all prunable layers.
    """

    name = "layer-by-layer"
    default_order = "forward"

    def __init__(self, importance: Any = None, *, order: str | None = None, layers: Iterable[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(importance, **kwargs)
        order = order or self.default_order
        if order not in ("forward", "backward", "one-shot"):
            raise ValueError(f"order must be 'forward', 'backward' or 'one-shot', got {order!r}")
        self.order = order
        self.layers = list(layers) if layers is not None else None

    def _chosen(self, model: nn.Module) -> list[str]:
        names = prunable_layers(model, self.heads)
        if self.layers is None:
            return names
        return list(resolve_ratios(model, {pattern: 0.0 for pattern in self.layers}, names))

    def _check_target(self, model: nn.Module, ratio, ratios, speed_up) -> None:
        if sum(x is not None for x in (ratio, ratios, speed_up)) > 1:
            raise ValueError("give one target: ratio=, ratios= or speed_up=")
        self._chosen(model)

    def _table(self, ctx: PipelineContext, ratio, ratios: Mapping[str, float] | None, speed_up) -> dict[str, float]:
        chosen = self._chosen(ctx.model)
        if ratios:
            table = resolve_ratios(ctx.model, ratios, prunable_layers(ctx.model, self.heads))
            return {n: table[n] for n in chosen if n in table}
        if speed_up is not None:
            ignored = [m for n, m in ctx.model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
                       and n not in chosen]
            engine = ctx.engine(ignored_layers=ignored)
            ratio = engine.search_ratio(speed_up)[0]
        r = 0.5 if ratio is None else ratio
        return {n: r for n in chosen}

    def _run(self, ctx: PipelineContext, ratio, ratios, speed_up) -> None:
        table = {n: r for n, r in self._table(ctx, ratio, ratios, speed_up).items() if r > 0}
        if self.order == "one-shot":
            ctx.stage("one-shot", f"{len(table)} layers", lambda: ctx.prune(0.0, table))
        else:
            original = ctx.report.widths_before
            names = list(table) if self.order == "forward" else list(reversed(table))
            for name in names:
                keep = max(1, int(original[name] * (1 - table[name])))
                ctx.stage("layer", name, lambda name=name, keep=keep: _prune_layer(ctx, name, keep))
        ctx.stage("final", "final", None)


def _prune_layer(ctx: PipelineContext, name: str, keep: int) -> None:
    """One layer's group down to ``keep`` channels (Torch-Pruning's count for the layer's ratio of its width before
    the run); nothing when a coupled layer's stage already narrowed it that far."""
    width = layer_widths(ctx.model)[name]
    if width > keep:
        ctx.prune(0.0, {name: ratio_keeping(width, keep)})


class LuoWuPipeline(LayerByLayerPipeline):
    """Luo & Wu, "An Entropy-based Pruning Method for CNN Compression", arXiv:1706.05791, 2017: GAP entropy
    (``gap-entropy``), layers pruned one by one in network order, each followed by a short recovery fine-tune, and
    a longer fine-tune at the end. For VGG-16 the paper replaces the fully connected layers by global average
    pooling and one classifier (:func:`~entropy_importance.pipelines.replace_classifier_with_gap`) and prunes
    conv1_1-conv4_3 (``layers=["features.0", ..., "features.21"]``)."""

    name = "luo-wu"
    default_importance = "gap-entropy"


class FECPipeline(LayerByLayerPipeline):
    """FEC, Geng & Niu, Computer Engineering 50(7), 2024: channel-similarity entropy (data-free), a different pruning
    ratio per layer (``ratios=``). Reading [I]: one-shot by default (the criterion needs no data, so nothing is
    measured again between layers); ``order="backward"`` prunes from the last layer to the first, as the authors'
    related FSABP work does, with ``finetune`` after each layer."""

    name = "fec"
    default_importance = "channel-similarity-entropy"
    default_order = "one-shot"
