"""PASCAL VOC detection data in its own folder layout (``VOCdevkit/VOC2007``, ``VOC2012``), checked completely before
anything is trained: every listed image's annotation is read once, and a missing or malformed file is one error that
names it. Augmentation as torchvision's detection references do it for SSD (``torchvision.transforms.v2``)."""

from __future__ import annotations

import copy
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from .models import RecipeError

__all__ = ["VOC_CLASSES", "VOCDetection", "voc_splits", "ssd_transforms"]

#: the 20 VOC classes; label 0 is the background, so class ``VOC_CLASSES[i]`` is label ``i + 1``
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _parse(path: Path) -> dict[str, torch.Tensor]:
    try:
        root = ET.parse(path).getroot()
        boxes, labels = [], []
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in VOC_CLASSES:
                raise ValueError(f"unknown class {name!r}")
            if obj.findtext("difficult", "0").strip() == "1":
                continue
            box = obj.find("bndbox")
            if box is None:
                raise ValueError("an object without <bndbox>")
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"an empty box {x0, y0, x1, y1}")
            boxes.append([x0 - 1, y0 - 1, x1, y1])  # VOC's pixel indices are 1-based and inclusive
            labels.append(VOC_CLASSES.index(name) + 1)
    except (ET.ParseError, ValueError, TypeError) as e:
        raise RecipeError(f"annotation {path} is malformed ({str(e).splitlines()[0]}): fix or remove it") from None
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


class VOCDetection(Dataset):
    """One VOC year's image set (``ImageSets/Main/{image_set}.txt``): ``(image, {"boxes", "labels"})`` with boxes
    in pixels (xyxy) and labels ``1..20`` (difficult objects left out, as VOC's evaluation does); ``transforms``
    take and return both (``torchvision.transforms.v2``).

    Raises:
        RecipeError: the folder, its annotations or the image set are missing, the set is empty, or an annotation
            is malformed (the message names the file).
    """

    def __init__(self, root: str | os.PathLike, year: str, image_set: str, transforms=None) -> None:
        base = Path(root).expanduser() / "VOCdevkit" / f"VOC{year}"
        if not base.is_dir():
            raise RecipeError(f"{base} does not exist: give --data-dir DIR holding VOCdevkit/VOC{year} (or "
                              "--download)")
        for sub in ("Annotations", "JPEGImages"):
            if not (base / sub).is_dir():
                raise RecipeError(f"{base / sub} does not exist: a VOC folder holds Annotations/, JPEGImages/ and "
                                  "ImageSets/Main/")
        listing = base / "ImageSets" / "Main" / f"{image_set}.txt"
        if not listing.is_file():
            raise RecipeError(f"image set {listing} does not exist")
        self.ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if not self.ids:
            raise RecipeError(f"image set {listing} is empty: list one image id per line")
        self.images = [base / "JPEGImages" / f"{i}.jpg" for i in self.ids]
        for image in self.images:
            if not image.is_file():
                raise RecipeError(f"image {image} listed in {listing} does not exist")
        self.targets = []
        for i in self.ids:
            xml = base / "Annotations" / f"{i}.xml"
            if not xml.is_file():
                raise RecipeError(f"annotation {xml} listed in {listing} does not exist")
            self.targets.append(_parse(xml))
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        from PIL import Image
        from torchvision import tv_tensors

        with Image.open(self.images[index]) as image:
            image = image.convert("RGB")
        target = self.targets[index]
        boxes = tv_tensors.BoundingBoxes(target["boxes"].clone(), format="XYXY", canvas_size=image.size[::-1])
        sample = image, {"boxes": boxes, "labels": target["labels"].clone()}
        return self.transforms(*sample) if self.transforms is not None else sample


def ssd_transforms(train: bool):
    """torchvision's SSD reference augmentation (photometric distortion, zoom out, IoU crop, flip) for training,
    plain conversion for evaluation; the model itself resizes to 300 px and normalises."""
    from torchvision.transforms import v2 as T

    convert = [T.PILToTensor(), T.ToDtype(torch.float32, scale=True)]
    if not train:
        return T.Compose(convert)
    return T.Compose([T.RandomPhotometricDistort(p=1.0), T.RandomZoomOut(fill=(123, 117, 104)), T.RandomIoUCrop(),
                      T.RandomHorizontalFlip(), *convert, T.SanitizeBoundingBoxes()])


def voc_splits(root: str | os.PathLike, download: bool = False, train_sets: tuple[tuple[str, str], ...] = (
        ("2007", "trainval"), ("2012", "trainval")), test_set: tuple[str, str] = ("2007", "test")):
    """``(train (augmented), train (plain), test)`` of VOC under ``root``; ``download`` fetches the missing years
    with torchvision's downloader first."""
    if download:
        import torchvision

        for year, image_set in (*train_sets, test_set):
            torchvision.datasets.VOCDetection(str(root), year=year, image_set=image_set, download=True)
    plain_sets = [VOCDetection(root, y, s, ssd_transforms(False)) for y, s in train_sets]
    augmented_sets = [copy.copy(d) for d in plain_sets]  # the annotations are read once, shared by both views
    for d in augmented_sets:
        d.transforms = ssd_transforms(True)
    return (ConcatDataset(augmented_sets), ConcatDataset(plain_sets),
            VOCDetection(root, *test_set, transforms=ssd_transforms(False)))


def voc_data(root: str | os.PathLike | None, download: bool = False, val_images: int = 500,
             smoke: bool = False):
    """The recipe splits of VOC: training (augmented) and a validation split held out of it (for the stage
    metric), 2007 test. ``smoke``: the 2007 ``train`` set for training and ``val`` for testing (a tiny folder the
    caller wrote).

    Raises:
        RecipeError: no ``root`` (VOC is read from a folder), or the folder is incomplete.
    """
    from torch.utils.data import Subset

    from .data import RecipeData, held_out

    if root is None:
        raise RecipeError("VOC is read from a folder: give --data-dir DIR holding VOCdevkit/ (add --download to "
                          "fetch it there)")
    sets = ((("2007", "train"),), ("2007", "val")) if smoke else ((("2007", "trainval"), ("2012", "trainval")),
                                                                    ("2007", "test"))
    augmented, plain, test = voc_splits(root, download, *sets)
    train_idx, val_idx, _ = held_out(len(plain), val_images, 0)
    return RecipeData(Subset(augmented, train_idx), Subset(plain, val_idx), test, Subset(plain, []),
                      len(VOC_CLASSES) + 1)


def write_synthetic_voc(root: str | os.PathLike, train: int = 8, val: int = 4, seed: int = 0) -> Path:
    """A tiny VOC 2007 folder under ``root`` (``train`` / ``val`` image sets of JPEG images, each with one to three
    filled rectangles of VOC classes and their annotations): what ``smoke-all`` runs the detection recipes on."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    base = Path(root) / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    names = {"train": [f"{i:06d}" for i in range(train)], "val": [f"{i:06d}" for i in range(train, train + val)]}
    for image_set, ids in names.items():
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            w, h = rng.randint(160, 240), rng.randint(160, 240)
            image = Image.new("RGB", (w, h), tuple(rng.randint(0, 80) for _ in range(3)))
            draw, objects = ImageDraw.Draw(image), []
            for _ in range(rng.randint(1, 3)):
                x0, y0 = rng.randint(1, w // 2), rng.randint(1, h // 2)
                x1, y1 = rng.randint(x0 + 20, w - 1), rng.randint(y0 + 20, h - 1)
                label = rng.choice(VOC_CLASSES[:3])
                draw.rectangle([x0, y0, x1, y1], fill=(200, 60, 60) if label == "aeroplane" else
                               (60, 200, 60) if label == "bicycle" else (60, 60, 200))
                objects.append(f"<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
                               f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
            image.save(base / "JPEGImages" / f"{i}.jpg")
            (base / "Annotations" / f"{i}.xml").write_text(
                f"<annotation><filename>{i}.jpg</filename><size><width>{w}</width><height>{h}</height>"
                f"<depth>3</depth></size>{''.join(objects)}</annotation>")
    return Path(root)
