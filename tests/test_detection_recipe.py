"""The SSD300 recipe: VOC folders read and checked (hand-written annotations), mAP through torchmetrics against
hand-computed average precisions, and the smoke run on a tiny VOC folder this test writes itself."""

import json

import pytest
import torch
import torch.nn as nn
from PIL import Image

from recipes.__main__ import main
from recipes.detection import evaluate_map
from recipes.models import RecipeError
from recipes.runner import load_result
from recipes.trainer import Runtime
from recipes.voc import VOC_CLASSES, VOCDetection, ssd_transforms

BOXES = {  # image id -> [(class, xmin, ymin, xmax, ymax, difficult)], VOC's 1-based inclusive pixels
    "a1": [("dog", 11, 21, 60, 80, 0), ("cat", 70, 10, 120, 50, 0)],
    "a2": [("dog", 5, 5, 40, 40, 0), ("person", 50, 50, 90, 90, 1)],
    "a3": [("cat", 30, 30, 100, 110, 0)],
    "a4": [("dog", 20, 60, 90, 120, 0)],
}


def _write_voc(root, sets=(("train", ["a1", "a2", "a3"]), ("val", ["a4", "a1"]))):
    base = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in BOXES.items():
        img = Image.new("RGB", (128, 128), (30, 30, 30))
        for _, x0, y0, x1, y1, _ in objects:
            img.paste((220, 120, 40), (x0, y0, x1, y1))
        img.save(base / "JPEGImages" / f"{image_id}.jpg")
        xml = "".join(f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                      f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for c, x0, y0, x1, y1, d in objects)
        (base / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{xml}</annotation>")
    for name, ids in sets:
        (base / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return base


def test_voc_annotations_are_read_as_written(tmp_path):
    _write_voc(tmp_path)
    data = VOCDetection(tmp_path, "2007", "train")
    assert data.ids == ["a1", "a2", "a3"]
    _, target = data[0]
    assert target["boxes"].tolist() == [[10, 20, 60, 80], [69, 9, 120, 50]]  # 0-based, exclusive end
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    _, target = data[1]
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]  # the difficult person is left out


def test_voc_errors_name_the_file(tmp_path):
    base = _write_voc(tmp_path)
    (base / "Annotations" / "a3.xml").write_text("<annotation><object><name>dog</name>")
    with pytest.raises(RecipeError, match=r"a3\.xml is malformed"):
        VOCDetection(tmp_path, "2007", "train")
    (base / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    with pytest.raises(RecipeError, match=r"empty\.txt is empty"):
        VOCDetection(tmp_path, "2007", "empty")
    (base / "Annotations" / "a4.xml").unlink()
    with pytest.raises(RecipeError, match=r"a4\.xml listed in .*val\.txt does not exist"):
        VOCDetection(tmp_path, "2007", "val")


class _Planted(nn.Module):
    """Returns the planted detections of each image, in order."""

    def __init__(self, detections):
        super().__init__()
        self.detections, self.calls = detections, 0
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = self.detections[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4), "scores": torch.tensor(s),
                 "labels": torch.tensor(lab, dtype=torch.int64)} for b, s, lab in out]


def test_map_at_iou_half_against_hand_computed_values(tmp_path):
    _write_voc(tmp_path)
    data = VOCDetection(tmp_path, "2007", "train", ssd_transforms(False))  # dog x2 (a1, a2), cat x2 (a1, a3)
    dog, cat = VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1
    truth = [data.targets[i] for i in range(3)]
    perfect = [(t["boxes"].tolist(), [0.9] * len(t["labels"]), t["labels"].tolist()) for t in truth]
    runtime = Runtime(torch.device("cpu"))
    assert evaluate_map(_Planted(perfect), data, runtime) == pytest.approx(1.0)
    # dogs: a1's found (0.9), a false positive elsewhere ranked next (0.8), a2's missed -> recall 1/2 at
    # precision 1: 101-point interpolated AP = 51/101; cats: both found -> 1. mAP = (51/101 + 1) / 2
    half = [([[10, 20, 60, 80], [69, 9, 120, 50]], [0.9, 0.9], [dog, cat]),
            ([[60, 60, 100, 100]], [0.8], [dog]),
            ([[29, 29, 100, 110]], [0.9], [cat])]
    assert evaluate_map(_Planted(half), data, runtime) == pytest.approx((51 / 101 + 1) / 2, abs=1e-4)


def test_ssd300_smoke_run_on_a_tiny_voc_folder(tmp_path, capsys):
    _write_voc(tmp_path / "voc")
    out = tmp_path / "run"
    assert main(["run", "fec-ssd300-voc", "--smoke", "--data-dir", str(tmp_path / "voc"), "--out", str(out),
                 "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["metric"] == "mAP@0.5" and 0.0 <= result["accuracy_after"] <= 100.0
    assert abs(result["params_reduction"] - 55.72) <= 1.0
    assert result["latency_after_ms"] > 0
    pruned = load_result(out / "pruned.pt")
    assert sum(p.numel() for p in pruned.parameters()) == result["params_after"]
    assert "| mAP@0.5 |" in capsys.readouterr().out


def test_ssd300_bad_voc_folder_is_one_line(tmp_path, capsys):
    base = _write_voc(tmp_path)
    (base / "Annotations" / "a2.xml").write_text("not xml at all <")
    out = tmp_path / "run"
    assert main(["run", "fec-ssd300-voc", "--smoke", "--data-dir", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a2.xml is malformed" in err
    assert not out.exists()
    assert main(["run", "fec-ssd300-voc", "--smoke", "--out", str(out)]) == 2
    assert "--data-dir" in capsys.readouterr().err
