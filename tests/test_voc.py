"""fl_lab.data.voc over a tiny VOC-format folder written here."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.io import write_jpeg

from fl_lab.data.transforms import RandomHorizontalFlip
from fl_lab.data.voc import VOC_CLASSES, VOCDataset

STANDARD = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
            "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]  # fmt: skip


def obj(name, box, difficult=None, extra=""):
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True))
    return f"<object><name>{name}</name><pose>Left</pose>{flag}<bndbox>{coords}</bndbox>{extra}</object>"


PART = obj("hand", (3, 3, 4, 4)).replace("object>", "part>")  # person layout: must not count as an object
XML = {
    "2008_000001": [obj("dog", (1, 2, 10, 12), 0), obj("person", (5, 6, 30, 20), 1, PART),
                    obj("aeroplane", (3, 3, 3, 4))],
    "2008_000002": [],
}


def make_voc(tmp_path, xml=None):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    for name, objects in (xml or XML).items():
        write_jpeg(torch.full((3, 20, 30), 128, dtype=torch.uint8), str(base / "JPEGImages" / f"{name}.jpg"))
        size = "<size><width>30</width><height>20</height><depth>3</depth></size>"
        body = (objects if isinstance(objects, str)
                else f"<annotation><filename>{name}.jpg</filename>{size}{''.join(objects)}</annotation>")
        (base / "Annotations" / f"{name}.xml").write_text(body)
    (base / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{n}\n" for n in (xml or XML)))
    return base


def test_classes_and_items(tmp_path):
    make_voc(tmp_path)
    ds = VOCDataset(tmp_path)
    assert list(VOC_CLASSES) == STANDARD and ds.class_names == STANDARD and ds.num_classes == 20
    assert ds.category_ids == list(range(1, 21)) and len(ds) == 2 and ds.ids == ["2008_000001", "2008_000002"]
    image, target = ds[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32 and abs(image.mean().item() - 128 / 255) < 0.01
    # 1-based inclusive pixel indices -> 0-based x1 y1 x2 y2: (xmin - 1, ymin - 1, xmax, ymax); difficult left out.
    assert target["boxes"].tolist() == [[0.0, 1.0, 10.0, 12.0], [2.0, 2.0, 3.0, 4.0]]
    assert target["labels"].tolist() == [STANDARD.index("dog"), 0] and target["labels"].dtype == torch.long
    assert target["image_id"] == 0 and target["boxes"].dtype == torch.float32
    image, target = ds[1]  # no objects
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["image_id"] == 1


def test_keep_difficult_and_transform(tmp_path):
    make_voc(tmp_path)
    ds = VOCDataset(tmp_path, keep_difficult=True, transform=RandomHorizontalFlip(1.0))
    image, target = ds[0]
    assert target["labels"].tolist() == [STANDARD.index("dog"), STANDARD.index("person"), 0]
    assert target["boxes"][1].tolist() == [0.0, 5.0, 26.0, 20.0]  # (4, 5, 30, 20) mirrored in a 30 px image


def test_ground_truth_marks_difficult_as_crowd(tmp_path):
    make_voc(tmp_path)
    gt = VOCDataset(tmp_path).coco_ground_truth()
    assert gt["images"] == [
        {"id": 0, "file_name": "2008_000001.jpg", "width": 30, "height": 20},
        {"id": 1, "file_name": "2008_000002.jpg", "width": 30, "height": 20},
    ]
    assert [c["name"] for c in gt["categories"]] == STANDARD and gt["categories"][0]["id"] == 1
    dog, person, plane = gt["annotations"]
    assert dog == {"id": 1, "image_id": 0, "category_id": 12, "bbox": [0.0, 1.0, 10.0, 11.0], "area": 110.0,
                   "iscrowd": 0}
    assert person["iscrowd"] == 1 and person["bbox"] == [4.0, 5.0, 26.0, 15.0] and plane["iscrowd"] == 0

    # Detecting the difficult person neither helps nor hurts: AP stays 1 for the others.
    dets = [{"image_id": 0, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.params.areaRng = [[0, 1e5]] * 4
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert np.isclose(ev.stats[0], 1.0)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC root folder not found: .*nowhere"):
        VOCDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"VOC folder not found: .*VOCdevkit/VOC2012"):
        VOCDataset(tmp_path)
    base = make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"image set list not found: .*ImageSets/Main/val\.txt"):
        VOCDataset(tmp_path, image_set="val")
    (base / "JPEGImages" / "2008_000002.jpg").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"1 file\(s\) listed in train\.txt not found, first: .*2008_000002\.jpg"):
        VOCDataset(tmp_path)


@pytest.mark.parametrize(
    "xml,message",
    [
        ("<annotation><size>", "malformed VOC annotation"),
        ("<annotation><object><name>dog</name></object></annotation>", "malformed VOC annotation"),
        ([obj("dog", (1, 1, "x", 5))], "malformed VOC annotation"),
        ([obj("unicorn", (1, 1, 5, 5))], r"unknown VOC class\(es\) \['unicorn'\]"),
        ([obj("dog", (8, 1, 5, 5))], "xmin <= xmax"),
    ],
)
def test_malformed_xml_names_the_file(tmp_path, xml, message):
    make_voc(tmp_path, {"2008_000003": xml})
    with pytest.raises(ValueError, match=message) as err:
        VOCDataset(tmp_path)
    assert "Annotations/2008_000003.xml" in str(err.value)


def test_voc_and_coco_clip_boxes_outside_the_image_alike(tmp_path):
    """The same four boxes in both formats: one inside, one reaching out on the right, one wholly
    outside, one with negative coordinates — clipped, the outside one left out, one warning each."""
    import json

    from torchvision.io import write_png

    from fl_lab.data.coco import CocoDataset

    voc_boxes = [(3, 4, 12, 8), (26, 6, 35, 10), (32, 2, 40, 6), (-2, -1, 5, 6)]  # 1-based, inclusive
    make_voc(tmp_path / "voc", {"2008_000001": [obj("dog", b) for b in voc_boxes]})
    with pytest.warns(UserWarning, match=r"3 box\(es\) reached outside their image \(the first in .*2008_000001.xml\)"):
        voc = VOCDataset(tmp_path / "voc")
    (tmp_path / "coco" / "images").mkdir(parents=True)
    write_png(torch.zeros(3, 20, 30, dtype=torch.uint8), str(tmp_path / "coco" / "images" / "a.png"))
    boxes = [[2, 3, 10, 5], [25, 5, 10, 5], [31, 1, 9, 5], [-3, -2, 8, 8]]  # x, y, w, h: the same boxes
    (tmp_path / "coco" / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b} for i, b in enumerate(boxes)]}))
    with pytest.warns(UserWarning, match=r"3 box\(es\) reached outside their image"):
        coco = CocoDataset(tmp_path / "coco" / "images", tmp_path / "coco" / "ann.json")
    expected = [[2.0, 3.0, 12.0, 8.0], [25.0, 5.0, 30.0, 10.0], [0.0, 0.0, 5.0, 6.0]]
    assert voc[0][1]["boxes"].tolist() == coco[0][1]["boxes"].tolist() == expected
    assert voc.num_dropped == coco.num_dropped == 3
