"""fl_lab.data.coco: the lesson's hand-made boxes, and clear errors for malformed files."""

import json
from pathlib import Path

import pytest
import torch

from fl_lab.data.coco import load_coco_annotations

ASSET = Path(__file__).resolve().parents[1] / "assets" / "grace_hopper_boxes.json"


def test_lesson_asset_loads():
    ann = load_coco_annotations(ASSET)
    assert ann.images[1]["file_name"] == "grace_hopper.jpg"
    assert ann.category_names[:2] == ["person", "face"] and ann.category_ids == list(range(1, 8))
    boxes = ann.boxes[1]
    assert boxes.shape == (7, 4) and ann.labels[1].tolist() == list(range(7))
    assert torch.equal(boxes[0], torch.tensor([12.0, 28.0, 512.0, 600.0]))  # [x, y, w, h] -> x1 y1 x2 y2


def write(tmp_path, data):
    path = tmp_path / "ann.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def good():
    return {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 90, "name": "z"}, {"id": 3, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 3, 4]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
        ],
    }


def test_sparse_ids_map_to_contiguous_labels_and_crowds_are_skipped(tmp_path):
    ann = load_coco_annotations(write(tmp_path, good()))
    assert ann.category_ids == [3, 90] and ann.category_names == ["a", "z"]
    assert ann.labels[7].tolist() == [1] and ann.boxes[7].tolist() == [[1.0, 2.0, 4.0, 6.0]]


def mutate(path_fn):
    data = good()
    path_fn(data)
    return data


@pytest.mark.parametrize(
    "data,message",
    [
        ("{not json", "is not valid JSON"),
        (mutate(lambda d: d.pop("images")), "missing the list 'images'"),
        (mutate(lambda d: d["annotations"][0].update(bbox=[0, 0, -1, 2])), "annotation 1 has a bad bbox"),
        (mutate(lambda d: d["annotations"][0].update(bbox=[0, 0, float("nan"), 2])), "annotation 1 has a bad bbox"),
        (mutate(lambda d: d["annotations"][0].update(image_id=8)), "unknown image 8"),
        (mutate(lambda d: d["annotations"][0].update(category_id=1)), "unknown category 1"),
        (mutate(lambda d: d["annotations"][0].pop("bbox")), "annotation 1 needs"),
        (mutate(lambda d: d["categories"][0].pop("name")), "category an 'id' and a 'name'"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        load_coco_annotations(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_annotations(tmp_path / "nope.json")
