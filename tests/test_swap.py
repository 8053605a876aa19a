"""The one-line swap: ``importance=create_importance(name)`` in an existing Torch-Pruning pipeline."""

import pytest
import torch
import torch_pruning as tp
from conftest import build_model, image_batches

from entropy_importance import EntropyPruner, create_importance, get_importance_info, list_importances
from entropy_importance.engine import attention_num_heads, classifier_layers, sync_attention_heads

CRITERIA = list_importances(source="entropy-importance")
MODELS = [
    "torchvision:resnet18",
    "torchvision:mobilenet_v2",
    "torchvision:densenet121",
    "torchvision:vgg16_bn",
    "timm:resnet18",
    "timm:convnext_atto",
    "timm:efficientnet_b0",
    "timm:vit_tiny_patch16_224",
]
SIZE = 64


def _build(spec):
    model = build_model(spec, SIZE)
    ignored = classifier_layers(model)
    if spec == "torchvision:vgg16_bn":
        ignored = [model.classifier]  # the whole 25088-4096-4096 MLP, as in the HRank/CHIP VGG layout
    return model.eval(), ignored


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _batches(n=2, batch=4):
    return image_batches(n, batch, SIZE)


def _importance(name, model):
    """The criterion, calibrated first when it needs data (synthetic images; tests/test_real_data.py uses real ones)."""
    imp = create_importance(name)
    return imp.calibrate(model, _batches()) if get_importance_info(name).needs_data else imp


def _prune_and_check(spec, name, **pruner_kwargs):
    model, ignored = _build(spec)
    x = torch.randn(2, 3, SIZE, SIZE)
    shape = model(x).shape
    before = _params(model)
    kwargs = {"ignored_layers": ignored, "num_heads": attention_num_heads(model), "pruning_ratio": 0.5,
              **pruner_kwargs}
    if pruner_kwargs.get("iterative_steps", 1) > 1:  # statistics must follow the pruned model: re-calibrate
        pruner = EntropyPruner(model, x, create_importance(name), calibration_data=_batches(), **kwargs)
    else:
        pruner = tp.pruner.MetaPruner(model, x, importance=_importance(name, model), **kwargs)
    for _ in range(pruner.iterative_steps):
        pruner.step()
        sync_attention_heads(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == shape
    assert torch.isfinite(out).all()
    assert _params(model) < before
    return model


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize("spec", MODELS)
def test_one_line_swap(spec, name):
    _prune_and_check(spec, name)


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize(
    "kwargs",
    [{"global_pruning": True}, {"iterative_steps": 3}, {"round_to": 8}],
    ids=["global", "iterative3", "round_to8"],
)
@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:mobilenet_v2"])
def test_pruner_options(spec, name, kwargs):
    model = _prune_and_check(spec, name, **kwargs)
    if "round_to" in kwargs:
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
        assert all(m.out_channels % 8 == 0 for m in convs if m.out_channels > 8), convs


@pytest.mark.parametrize("name", CRITERIA)
def test_pruning_ratio_dict(name):
    model, ignored = _build("timm:resnet18")
    x = torch.randn(1, 3, SIZE, SIZE)
    pruner = tp.pruner.MetaPruner(
        model, x, importance=_importance(name, model), ignored_layers=ignored, pruning_ratio=0.0,
        pruning_ratio_dict={model.layer1: 0.5},
    )
    width_l2 = model.layer2[0].conv1.out_channels
    pruner.step()
    assert model.layer1[0].conv1.out_channels == 32
    assert model.layer2[0].conv1.out_channels == width_l2
    assert model(x).shape == (1, 10)
