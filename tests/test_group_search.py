"""The group search of ``repairs()`` (``repairs.get_pruning_group``) against Torch-Pruning's own search."""

import timm
import torch
import torch_pruning as tp

from entropy_importance import repairs
from entropy_importance.models import create_model


def _groups(model: torch.nn.Module, x: torch.Tensor):
    """(name, Torch-Pruning's group, ours) for every conv/linear root, and each item's channel count."""
    with repairs():  # exact widths for both; inside the block graph.get_pruning_group is ours
        torch_pruning_search = tp.DependencyGraph.get_pruning_group.__wrapped__
        graph = tp.DependencyGraph().build_dependency(model, x)
        for module in list(graph.module2node):
            if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                continue
            pruner = graph.get_pruner_of_module(module)
            idxs = list(range(pruner.get_out_channels(module)))
            yield (graph, torch_pruning_search(graph, module, pruner.prune_out_channels, idxs),
                   graph.get_pruning_group(module, pruner.prune_out_channels, idxs))


def _channels(graph, dep) -> int | None:
    module = dep.target.module
    if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
        return None
    pruner = graph.get_pruner_of_module(module)
    return pruner.get_out_channels(module) if graph.is_out_channel_pruning_fn(dep.handler) else \
        pruner.get_in_channels(module)


def _as_dict(group) -> dict:
    return {(id(item.dep.target), item.dep.handler): dict(zip(item.idxs, item.root_idxs, strict=True))
            for item in group.items}


def _in_range(graph, group) -> bool:
    return all(max(item.idxs) < n for item in group.items if (n := _channels(graph, item.dep)) is not None)


def test_same_groups_as_torch_pruning_where_its_groups_are_valid():
    # concat (DenseNet), split (Res2Net) and dual-path concat + add (DPN), whose Torch-Pruning groups partly address
    # channels past a layer's width (plain Torch-Pruning fails on them with IndexError): on every valid group the
    # two searches agree on every layer, index and root index
    models = [(create_model("torchvision:densenet121", num_classes=10), 64),
              (timm.create_model("res2net50_14w_8s", num_classes=10), 64),
              (timm.create_model("dpn48b", num_classes=10), 64)]
    compared = invalid = 0
    for model, size in models:
        for graph, theirs, ours in _groups(model.eval(), torch.randn(1, 3, size, size)):
            assert _in_range(graph, ours)
            if not _in_range(graph, theirs):
                invalid += 1
                continue
            assert _as_dict(ours) == _as_dict(theirs)
            compared += 1
    assert compared > 300 and invalid > 0  # 121 + 150 + 34 valid groups; DPN's invalid ones are skipped


def test_groups_of_partial_residual_adds_are_formed_quickly():
    # RexNet adds each block's input to the first channels of its wider output; Torch-Pruning 1.6 keeps following
    # the same indices around these adds and does not finish forming the stream's group in minutes
    model = timm.create_model("rexnet_100", num_classes=10).eval()
    import time

    start = time.perf_counter()
    with repairs():
        graph = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 64, 64))
        conv = model.features[15].conv_pwl.conv
        pruner = graph.get_pruner_of_module(conv)
        group = graph.get_pruning_group(conv, pruner.prune_out_channels, list(range(conv.out_channels)))
    assert time.perf_counter() - start < 60
    assert _in_range(graph, group)
    assert group[0].dep.target.module is conv and sorted(group[0].idxs) == list(range(conv.out_channels))
