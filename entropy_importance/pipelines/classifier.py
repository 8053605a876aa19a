"""Global-average-pooling head for VGG-style networks (Luo & Wu 2017): :func:`replace_classifier_with_gap`."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch.nn as nn

__all__ = ["replace_classifier_with_gap"]

_SUPPORTED = ("supported: VGG-style models with a `features` conv stack and a `classifier` holding nn.Linear layers, "
              "i.e. torchvision vgg* / vgg*_bn (features -> avgpool -> flatten -> classifier) and nn.Sequential "
              "VGGs such as recipes.cifar_models.vgg16_bn (features, pool, flatten, classifier)")

#: modules allowed between ``features`` and ``classifier`` of an nn.Sequential VGG (replaced by the new head)
_BETWEEN = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd, nn.Flatten, nn.Dropout, nn.Identity)
_POOLS = _BETWEEN[:4]


def replace_classifier_with_gap(model: nn.Module, num_classes: int | None = None) -> nn.Module:
    """A copy of a VGG-style ``model`` whose fully connected classifier is replaced by global average pooling and one
    linear layer, as Luo & Wu, "An Entropy-based Pruning Method for CNN Compression", arXiv:1706.05791, 2017, do
    for VGG-16 (the three FC layers, 90 % of its parameters, become ``GAP + Linear(512, K)``).

    The new head is ``AdaptiveAvgPool2d(1)`` -> flatten -> ``Linear(C, K)``, ``C`` the out-channels of the last conv
    of ``model.features``, ``K = num_classes`` or the old classifier's last ``out_features``; the linear layer is
    initialised ``weight ~ N(0, 0.01^2)``, ``bias = 0``, on the device and dtype of that conv, in the model's
    training mode. ``model.classifier`` holds the new ``nn.Linear`` (so :func:`~entropy_importance.task_heads` finds
    it). For a model with its own forward (torchvision ``VGG``: features -> avgpool -> flatten -> classifier),
    ``avgpool`` becomes ``AdaptiveAvgPool2d(1)``; for an ``nn.Sequential`` (features, pool, flatten, classifier) the
    modules between ``features`` and ``classifier`` become ``pool = AdaptiveAvgPool2d(1)`` and ``flatten``. The
    parameters drop by those of the old classifier minus ``C * K + K``; the features are copied unchanged.

    ``model`` is never modified (its old classifier is not even copied).

    Raises:
        ValueError: not VGG-style (no ``features`` module with a conv, no ``classifier`` with an ``nn.Linear``; a
            non-Sequential model without ``avgpool``; an nn.Sequential with other modules around the head), or a bad
            ``num_classes``. The message says which models are supported.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if not isinstance(features, nn.Module) or not isinstance(classifier, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `features` and `classifier` modules; {_SUPPORTED}")
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in features.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not linears or not convs:
        missing = "an nn.Linear in `classifier`" if not linears else "a conv layer in `features`"
        raise ValueError(f"{type(model).__name__} has no {missing}; {_SUPPORTED}")
    last = convs[-1]
    head = nn.Linear(last.out_channels, num_classes or linears[-1].out_features,
                     device=last.weight.device, dtype=last.weight.dtype)
    nn.init.normal_(head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(head.bias)
    pool, flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
    for m in (head, pool, flatten):
        m.train(model.training)

    if isinstance(model, nn.Sequential):
        children = list(model.named_children())
        names = [n for n, _ in children]
        if names[0] != "features" or names[-1] != "classifier" or \
                not all(isinstance(m, _BETWEEN) for _, m in children[1:-1]):
            raise ValueError(f"this nn.Sequential is not features -> pooling / flatten -> classifier ({names}); "
                             f"{_SUPPORTED}")
        skip = {id(m): None for _, m in children[1:]}  # rebuilt below: not copied
        new = copy.deepcopy(model, memo=skip)
        pool_name = next((n for n, m in children[1:-1] if isinstance(m, _POOLS)), "pool")
        flat_name = next((n for n, m in children[1:-1] if isinstance(m, nn.Flatten)), "flatten")
        new._modules = OrderedDict([("features", new._modules["features"]), (pool_name, pool),
                                    (flat_name, flatten), ("classifier", head)])
    else:
        if not isinstance(getattr(model, "avgpool", None), nn.Module):
            raise ValueError(f"{type(model).__name__} has no `avgpool` module (its forward must be features -> avgpool "
                             f"-> flatten -> classifier); {_SUPPORTED}")
        new = copy.deepcopy(model, memo={id(classifier): None, id(model.avgpool): None})
        new.avgpool = pool
        new.classifier = head
    return new
