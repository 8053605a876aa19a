"""Three small networks for native 1x28x28 Fashion-MNIST images, the bases of ``benchmarks.quality``:

* :func:`vgg_fm`: a plain VGG-style net, conv-BN-ReLU pairs with max pooling, global average pool, one linear layer;
* :func:`resnet20_fm`: ResNet-20 style (3 stages of 3 basic blocks, option-B shortcuts, BatchNorm), the CIFAR
  ResNet of :mod:`recipes.cifar_models` with a 1-channel stem;
* :func:`mobilenetv2_fm`: MobileNetV2 style, torchvision's inverted-residual blocks (1x1 expand, 3x3 depthwise,
  1x1 linear project, residual where the shape allows, ReLU6, BatchNorm).

``width`` scales every width (rounded to a multiple of 4, at least 4): the benchmark sizes the nets to a CPU budget
with it (``--quick`` uses narrow ones).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from .cifar_models import CifarResNet

__all__ = ["FMNIST_MODELS", "vgg_fm", "resnet20_fm", "mobilenetv2_fm"]


def _w(channels: int, width: float) -> int:
    return max(4, int(round(channels * width / 4)) * 4)


_VGG = (32, 32, "M", 64, 64, "M", 128, 128)


def vgg_fm(num_classes: int = 10, width: float = 1.0, in_channels: int = 1) -> nn.Sequential:
    """conv3x3-BN-ReLU x2, max pool, x2, max pool, x2 (widths 32-32 / 64-64 / 128-128 at ``width=1``), global
    average pool, linear classifier: 28 -> 14 -> 7 pixels."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for v in _VGG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        c = _w(v, width)
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        c_in = c
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Linear(c_in, num_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def resnet20_fm(num_classes: int = 10, width: float = 1.0, in_channels: int = 1) -> CifarResNet:
    """ResNet-20: a 3x3 stem, 3 stages of 3 basic blocks (widths 16 / 32 / 64 at ``width=1``, stride 2 at the
    start of stages 2 and 3: 28 -> 14 -> 7 pixels), global average pool, linear classifier."""
    return CifarResNet(3, num_classes, tuple(_w(c, width) for c in (16, 32, 64)), in_channels=in_channels)


#: (expansion t, output channels c, blocks n, stride of the first block s), MobileNetV2's table for 28 px
_MOBILENET = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 2, 1))


class MobileNetV2FM(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, in_channels: int = 1, last: int = 256) -> None:
        super().__init__()
        c_in = _w(16, width)
        layers: list[nn.Module] = [Conv2dNormActivation(in_channels, c_in, 3, 1, activation_layer=nn.ReLU6)]
        for t, c, n, s in _MOBILENET:
            c = _w(c, width)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        last = _w(last, width)
        layers.append(Conv2dNormActivation(c_in, last, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenetv2_fm(num_classes: int = 10, width: float = 1.0, in_channels: int = 1) -> MobileNetV2FM:
    """MobileNetV2 style: a 3x3 stem (16), inverted residuals 16 / 24 x2 (stride 2) / 32 x3 (stride 2) / 64 x2
    (expansion 4, except 1 in the first), a 1x1 conv to 256, global average pool, linear classifier: 28 -> 14 -> 7
    pixels (widths at ``width=1``)."""
    return MobileNetV2FM(num_classes, width, in_channels)


FMNIST_MODELS: dict[str, Callable[..., nn.Module]] = {"vgg": vgg_fm, "resnet20": resnet20_fm,
                                                      "mobilenetv2": mobilenetv2_fm}
