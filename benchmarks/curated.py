"""The curated model list (one small model per family, each pruned in seconds on 2 CPU cores) that
tests/test_models.py tests and benchmarks/prune_overhead.py times, and how each is built."""

from __future__ import annotations

import torch
import torch.nn as nn

# (spec, input size): one small model per family, each pruned in seconds on 2 CPU cores
CURATED_MODELS = [
    ("timm:resnet18", 64),               # plain CNN, residual
    ("timm:seresnet18", 64),             # squeeze-excitation
    ("timm:resnext26ts", 64),            # grouped conv
    ("timm:mobilenetv2_050", 64),        # depthwise, inverted residual
    ("timm:mobilenetv3_small_050", 64),  # hard-swish, SE
    ("timm:efficientnet_b0", 64),        # depthwise + SE
    ("timm:densenet121", 64),            # concatenation
    ("timm:regnetx_002", 64),            # RegNet, grouped
    ("timm:regnety_002", 64),            # RegNet + SE
    ("timm:vit_tiny_patch16_224", 64),   # ViT, fused qkv attention
    ("timm:deit_tiny_patch16_224", 64),  # DeiT
    ("timm:swin_tiny_patch4_window7_224", 64),  # Swin: windowed attention, patch merging (window 4 at 64 px)
    ("timm:convnext_atto", 64),          # ConvNeXt, layer-scale gamma
    ("timm:mixer_s16_224", 64),          # MLP-Mixer
    ("timm:resmlp_12_224", 64),          # ResMLP, affine layers
    ("timm:cspresnet50", 64),            # CSP
    ("timm:ghostnet_100", 64),           # ghost modules (concat of cheap ops)
    ("timm:dla34", 64),                  # deep layer aggregation
    ("timm:repvgg_a0", 64),              # RepVGG
    ("timm:lcnet_050", 64),              # PP-LCNet
    ("timm:tinynet_e", 64),              # TinyNet
    ("timm:mnasnet_small", 64),          # MnasNet
    ("timm:mobilevit_xxs", 64),          # conv + transformer
    ("timm:poolformer_s12", 64),         # MetaFormer
    ("timm:vgg11_bn", 64),               # timm VGG with conv head
    ("timm:hardcorenas_a", 64),          # NAS, SE
    ("timm:ese_vovnet19b_dw", 64),       # VoVNet, eSE
    ("timm:gernet_s", 64),               # GENet / ByobNet
    ("timm:rexnet_100", 64),             # partial residual adds (Torch-Pruning's own group search never ends)
    ("torchvision:ssdlite320_mobilenet_v3_large", 320),  # detection
    ("torchvision:ssd300_vgg16", 300),   # detection, VGG backbone with extra feature layers
]


BUILD_KWARGS = {"timm:swin_tiny_patch4_window7_224": {"window_size": 4}}


def build_model(spec: str, size: int, num_classes: int | None = 10, **kwargs) -> nn.Module:
    """A timm / torchvision model for ``size`` px inputs (timm models take ``img_size`` where they accept it), seeded,
    in eval mode."""
    from entropy_importance.models import create_model

    torch.manual_seed(0)
    if spec.startswith("timm:"):
        try:
            return create_model(spec, num_classes=num_classes, img_size=size, **kwargs).eval()
        except TypeError:
            torch.manual_seed(0)
    return create_model(spec, num_classes=num_classes, **kwargs).eval()


def build_curated(spec: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """A curated model (detectors without a class count) and a ``1 x 3 x size x size`` example input."""
    if spec.startswith("torchvision:ssd"):
        return build_model(spec, size, num_classes=None), torch.randn(1, 3, size, size)
    return build_model(spec, size, **BUILD_KWARGS.get(spec, {})), torch.randn(1, 3, size, size)
