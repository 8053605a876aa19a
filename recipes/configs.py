"""The recipes, as data. Reductions are percent of the unpruned model (Torch-Pruning's counter); where a paper's
per-layer ratios are unknown, the table is ours, chosen to reach its reported numbers (``reading`` says so)."""

from __future__ import annotations

from .recipe import Claim, Recipe, Schedule

__all__ = ["RECIPES", "get_recipe", "list_recipes"]

# conv layers of recipes.cifar_models.vgg16_bn by VGG stage (conv1_x ... conv5_x)
_CIFAR_VGG_STAGES = (("features.0", "features.3"), ("features.7", "features.10"),
                     ("features.14", "features.17", "features.20"), ("features.24", "features.27", "features.30"),
                     ("features.34", "features.37", "features.40"))
# conv1_1 ... conv4_3 of torchvision's vgg16
_VGG16_CONV1_TO_CONV4 = ("features.0", "features.2", "features.5", "features.7", "features.10", "features.12",
                         "features.14", "features.17", "features.19", "features.21")


#: torchvision's detection reference for SSD300 on 8 GPUs: 4 images each, lr 0.002, x0.1 at epochs 80 and 110
_SSD_TRAIN = Schedule(epochs=120, lr=0.002, batch_size=4, weight_decay=5e-4, decay="step", milestones=(80, 110))


def _vgg_stages(*ratios: float) -> dict[str, float]:
    return {layer: r for stage, r in zip(_CIFAR_VGG_STAGES, ratios, strict=True) for layer in stage}


def _percent(factor: float) -> float:
    """A reported "Nx" compression or speed-up as a reduction in percent."""
    return round(100.0 * (1.0 - 1.0 / factor), 2)


_CIFAR_TRAIN = Schedule(epochs=160, lr=0.1, batch_size=128, weight_decay=5e-4, decay="step", milestones=(80, 120))
_IMAGENET_TRAIN = Schedule(epochs=90, lr=0.1, batch_size=256, weight_decay=1e-4, decay="step", milestones=(30, 60))
# Luo & Wu after ThiNet: 1 epoch at 1e-3 after each layer, 12 epochs at the end
_LUO_RECOVERY = Schedule(epochs=1, lr=1e-3, batch_size=256, weight_decay=1e-4, decay="step")
_LUO_FINAL = Schedule(epochs=12, lr=1e-3, batch_size=256, weight_decay=1e-4, decay="step", milestones=(4, 8))


def _cifar_finetune(epochs: int) -> Schedule:
    """Fine-tuning on CIFAR: cosine from 0.01, batch 128, weight decay 5e-4."""
    return Schedule(epochs=epochs, lr=0.01, batch_size=128, weight_decay=5e-4)


def _imagenet_finetune(epochs: int) -> Schedule:
    """Fine-tuning on ImageNet: cosine from 0.01, batch 256, weight decay 1e-4."""
    return Schedule(epochs=epochs, lr=0.01, batch_size=256, weight_decay=1e-4)


_RECIPES = [
    Recipe(
        name="luo-vgg16-imagenet", paper="Luo & Wu 2017, arXiv:1706.05791", model="vgg16", dataset="imagenet",
        num_classes=1000, input_size=224, pipeline="luo-wu", transform="gap-classifier",
        pipeline_options={"layers": list(_VGG16_CONV1_TO_CONV4)},
        target={"ratios": {layer: 0.5 for layer in _VGG16_CONV1_TO_CONV4}},
        claim=Claim(params=_percent(16.64), macs=_percent(3.3), accuracy="about 1 % top-5 loss",
                    source="16.64x compression, 3.3x speed-up"),
        train=_IMAGENET_TRAIN,
        recovery=_LUO_RECOVERY, final=_LUO_FINAL,
        calibration_images=10000,
        reading="50 % of the filters of conv1_1-conv4_3, conv5_x kept, the three FC layers replaced by global average "
                "pooling and one classifier (these give the paper's 16.64x / 3.3x exactly); fine-tunes: 1 epoch at "
                "1e-3 after each layer, 12 epochs at the end (ThiNet's schedule, same authors) [I]."),
    Recipe(
        name="luo-resnet50-imagenet", paper="Luo & Wu 2017, arXiv:1706.05791", model="resnet50", dataset="imagenet",
        num_classes=1000, input_size=224, pipeline="luo-wu",
        target={"ratios": {"layer*.conv1": 0.29, "layer*.conv2": 0.29}},
        claim=Claim(params=_percent(1.47), macs=_percent(1.54), accuracy="about 1 % top-5 loss",
                    source="1.47x compression, 1.54x speed-up"),
        train=_IMAGENET_TRAIN,
        recovery=_LUO_RECOVERY, final=_LUO_FINAL,
        calibration_images=10000,
        reading="the first two convolutions of every bottleneck pruned by 29 %, block outputs kept (ThiNet-style; "
                "the ratio is ours, chosen to reach 1.47x / 1.54x) [I]."),
    Recipe(
        name="efp-vgg16-cifar10", paper="Li et al., ICANN 2019", model="cifar-vgg16", dataset="cifar10",
        num_classes=10, input_size=32, pipeline="efp", pipeline_options={"alpha": 0.8, "rounds": 4},
        target={"ratios": _vgg_stages(0.2, 0.5, 0.5, 0.75, 0.9)},
        claim=Claim(params=92.9, macs=76.0, accuracy="no accuracy loss"),
        train=_CIFAR_TRAIN,
        recovery=_cifar_finetune(30),
        final=_cifar_finetune(40),
        calibration_images=1280,
        reading="4 rounds of the features selection module (maps below 0.8 x the layer mean), each followed by 30 "
                "epochs of fine-tuning, within a per-layer budget by VGG stage (20/50/50/75/90 %, ours, chosen to "
                "reach -92.9 % params / -76 % FLOPs); the last round prunes what is left of the budget [I]."),
    Recipe(
        name="fec-vgg16-cifar10", paper="Geng & Niu, Computer Engineering 50(7), 2024", model="cifar-vgg16",
        dataset="cifar10", num_classes=10, input_size=32, pipeline="fec",
        target={"ratios": _vgg_stages(0.2, 0.2, 0.5, 0.85, 0.9)},
        claim=Claim(params=94.0, macs=None, accuracy="accuracy largely kept", source="about -94 % params"),
        train=_CIFAR_TRAIN, recovery=None,
        final=_cifar_finetune(160),
        reading="one-shot, data-free, a ratio per VGG stage (20/20/50/85/90 %, ours, chosen to reach about -94 % "
                "params), then 160 epochs of fine-tuning [I]."),
    Recipe(
        name="fec-resnet34-imagenet", paper="Geng & Niu, Computer Engineering 50(7), 2024", model="resnet34",
        dataset="imagenet", num_classes=1000, input_size=224, pipeline="fec",
        target={"ratios": {"layer*.conv1": 0.725}},
        claim=Claim(params=70.0, macs=None, accuracy="accuracy largely kept", source="about -70 % params"),
        train=_IMAGENET_TRAIN, recovery=None,
        final=_imagenet_finetune(90),
        reading="one-shot, data-free, the first convolution of every basic block pruned by 72.5 % (ours, chosen to "
                "reach about -70 % params; block outputs kept), then 90 epochs of fine-tuning [I]."),
    Recipe(
        name="tang-resnet110-cifar10", paper="Tang et al., arXiv:2303.03645 / IEEE TNNLS 2025", model="cifar-resnet110",
        dataset="cifar10", num_classes=10, input_size=32, pipeline="tang",
        target={"ratios": {"layer1.*.conv1": 0.74, "layer2.*.conv1": 0.73, "layer3.*.conv1": 0.675}},
        claim=Claim(params=69.4, macs=71.9, accuracy="+0.28 accuracy"),
        train=_CIFAR_TRAIN, recovery=None,
        final=_cifar_finetune(300),
        reading="one-shot, data-free, the first convolution of every block pruned by 74 / 73 / 67.5 % in the three "
                "stages (ours, chosen to reach -69.4 % params / -71.9 % FLOPs), then 300 epochs of fine-tuning [I]."),
    Recipe(
        name="tang-resnet50-imagenet", paper="Tang et al., arXiv:2303.03645 / IEEE TNNLS 2025", model="resnet50",
        dataset="imagenet", num_classes=1000, input_size=224, pipeline="tang",
        target={"ratios": {"layer1.*.conv[12]": 0.85, "layer2.*.conv[12]": 0.8, "layer3.*.conv[12]": 0.78,
                           "layer4.*.conv[12]": 0.72}},
        claim=Claim(params=68.6, macs=76.6, accuracy="-2.80 top-1"),
        train=_IMAGENET_TRAIN, recovery=None,
        final=_imagenet_finetune(90),
        reading="one-shot, data-free, the first two convolutions of every bottleneck pruned by 85 / 80 / 78 / 72 % "
                "in the four stages (ours, chosen to reach -68.6 % params / -76.6 % FLOPs), then 90 epochs [I]."),
    Recipe(
        name="2pfpce-vgg16-cifar10", paper="Min et al., arXiv:1809.02220, 2018", model="cifar-vgg16",
        dataset="cifar10", num_classes=10, input_size=32, pipeline="2pfpce",
        pipeline_options={"threshold": 2.0, "step_ratio": 0.1, "freeze_fraction": 0.2, "max_steps": 40},
        target={"speed_up": 10.0},
        claim=Claim(params=None, macs=90.0, accuracy="-2 % accuracy, -46 % inference time", source="10x FLOPs"),
        train=_CIFAR_TRAIN,
        recovery=_cifar_finetune(20),
        final=_cifar_finetune(40),
        calibration_images=5000, labels_needed=True,
        reading="CIFAR-10 is our reading of the paper's dataset; steps of 10 % of the channels, global ranking while "
                "the accuracy stays within 2 points, then layer-wise, to 10x fewer MACs (the last step lands on the "
                "target); 20 epochs of fine-tuning per step with the 20 % highest-entropy channels of each layer "
                "frozen, 40 at the end [I]."),
    Recipe(
        name="fec-ssd300-voc", paper="Geng & Niu, Computer Engineering 50(7), 2024", model="ssd300-vgg16",
        dataset="voc", num_classes=21, input_size=300, pipeline="fec", task="detection",
        target={"ratios": {"backbone.*": 0.355}},
        claim=Claim(params=55.72, macs=None, accuracy="+1.04 mAP", source="SSD, VGG-16 backbone, PASCAL VOC"),
        train=_SSD_TRAIN, recovery=None,
        final=Schedule(epochs=40, lr=0.002, batch_size=4, weight_decay=5e-4, decay="step", milestones=(30,)),
        calibration_images=0,
        reading="torchvision's ssd300_vgg16 on VOC 2007+2012 trainval (ImageNet VGG-16 backbone with --pretrained), "
                "trained as torchvision's detection reference trains it (SSD augmentation, 120 epochs, lr 0.002, "
                "x0.1 at 80 and 110, 4 images per process on 8 processes); one-shot, data-free, every convolution "
                "of the backbone and the extra feature layers pruned by 35.5 % (ours, chosen to reach -55.72 % "
                "params; the detection heads keep their outputs and lose the inputs their feature maps lost), then "
                "40 epochs of fine-tuning [I]; mAP at IoU 0.5 on VOC 2007 test with torchmetrics' 101-point "
                "interpolation (VOC 2007's own metric uses 11 points)."),
]

RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def list_recipes() -> list[str]:
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; raises ``KeyError`` naming the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
