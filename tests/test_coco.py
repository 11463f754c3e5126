"""fl_lab.data.coco: the lesson's hand-made boxes, and clear errors for malformed files."""

import contextlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from torchvision.io import write_jpeg, write_png

from fl_lab.data.coco import CocoDataset, load_coco_annotations
from fl_lab.data.transforms import Compose, RandomHorizontalFlip, Resize, collate

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


def mutate(change, make=None):
    """A copy of a valid annotation dict (``make()``, default ``good()``) with ``change`` applied."""
    data = (make or good)()
    change(data)
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
        (mutate(lambda d: d["images"].append(dict(d["images"][0]))), "image id 7 appears more than once"),
        (mutate(lambda d: d["categories"][1].update(id=90)), "category id 90 appears more than once"),
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


# --- CocoDataset over a tiny folder written here -------------------------------------------



def pixels(height, width, seed):
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def tiny_coco():
    """Image 1 (20x30 png): a box and a crowd; image 2 (16x24 jpg): a box and two degenerate ones; image 3: none."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 2, "file_name": "sub/b.jpg", "width": 24, "height": 16},
            {"id": 3, "file_name": "c.png", "width": 10, "height": 10},
        ],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 3, 10, 5]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 20], "iscrowd": 1, "area": 500},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [4, 4, 0.5, 6]},  # under 1 px wide
            {"id": 4, "image_id": 2, "category_id": 5, "bbox": [24, 1, 5, 5]},  # right of the image
            {"id": 5, "image_id": 2, "category_id": 2, "bbox": [1.5, 2.5, 8, 4], "iscrowd": 0},
        ],
    }


def make_folder(tmp_path, data=None):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    write_png(pixels(20, 30, 1), str(images / "a.png"))
    write_jpeg(pixels(16, 24, 2), str(images / "sub" / "b.jpg"))
    write_png(pixels(10, 10, 3), str(images / "c.png"))
    return images, write(tmp_path, data if data is not None else tiny_coco())


def dataset(tmp_path, data=None, **kwargs):
    images, ann = make_folder(tmp_path, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CocoDataset(images, ann, **kwargs)


def test_dataset_items_follow_the_conventions(tmp_path, capsys):
    images, ann = make_folder(tmp_path)
    with pytest.warns(UserWarning,
                      match=r"ann\.json: 2 box\(es\) reached outside their image or were under 1 px") as record:
        ds = CocoDataset(images, ann)
    assert len(record) == 1 and ds.num_dropped == 2
    assert capsys.readouterr().out == ""  # pycocotools' index messages are silenced
    assert (ds.num_classes, ds.class_names, ds.category_ids, ds.image_ids) == (2, ["cat", "dog"], [2, 5], [1, 2, 3])
    assert len(ds) == 3 and ds.coco.getAnnIds(imgIds=[1]) == [1, 2]

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 20, 30)
    assert torch.equal(image, pixels(20, 30, 1).float() / 255)  # PNG is lossless
    assert target["image_id"] == 1 and target["labels"].tolist() == [1] and target["labels"].dtype == torch.long
    assert target["boxes"].dtype == torch.float32 and target["boxes"].tolist() == [[2.0, 3.0, 12.0, 8.0]]

    image, target = ds[1]  # the two degenerate boxes are gone, the good one converted to x1 y1 x2 y2
    assert image.shape == (3, 16, 24) and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].tolist() == [[1.5, 2.5, 9.5, 6.5]] and target["labels"].tolist() == [0]

    image, target = ds[2]  # kept although it has no boxes
    assert image.shape == (3, 10, 10) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.long


def test_category_id_labels_for_torchvision_models(tmp_path):
    ds = dataset(tmp_path, category_id_labels=True)
    assert ds[0][1]["labels"].tolist() == [5] and ds[1][1]["labels"].tolist() == [2]  # dog is id 5, cat id 2
    assert ds[1][1]["labels"].dtype == torch.long and ds[2][1]["labels"].shape == (0,)


def test_dataset_shares_the_reader(tmp_path):
    ds = dataset(tmp_path)
    plain = load_coco_annotations(ds.annotation_file)  # keeps the degenerate boxes CocoDataset drops
    assert plain.boxes[2].shape == (3, 4) and plain.category_ids == ds.category_ids
    assert torch.equal(plain.boxes[1], ds[0][1]["boxes"])


def test_ground_truth_keeps_crowds_and_works_with_cocoeval(tmp_path):
    ds = dataset(tmp_path)
    gt = ds.coco_ground_truth()
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4, 5]
    crowd = gt["annotations"][1]
    assert crowd["iscrowd"] == 1 and crowd["bbox"] == [0, 0, 30, 20]
    assert gt["annotations"][0]["iscrowd"] == 0 and gt["annotations"][0]["area"] == 50.0  # defaults filled in
    gt["annotations"].clear()
    assert len(ds.coco_ground_truth()["annotations"]) == 5  # a copy

    # Perfect detections plus one on the crowd region: the crowd one is ignored, AP stays 1.
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in ds.coco_ground_truth()["annotations"] if not a["iscrowd"]]  # fmt: skip
    dets.append({"image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 20], "score": 0.95})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = ds.coco_ground_truth()
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.params.areaRng = [[0, 1e5]] * 4  # tiny boxes: count them all in every area range
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert np.isclose(ev.stats[0], 1.0)


def test_missing_image(tmp_path):
    images, ann = make_folder(tmp_path)
    (images / "sub" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) missing, the first: .*images/sub/b\.jpg"):
        CocoDataset(images, ann)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CocoDataset(images, ann, check_files=False)  # lazily: at __getitem__
    assert ds[0][0].shape == (3, 20, 30)
    with pytest.raises(FileNotFoundError, match=r"sub/b\.jpg"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        CocoDataset(tmp_path / "nowhere", ann)


def test_image_of_another_size(tmp_path):
    data = tiny_coco()
    data["images"][0]["height"] = 21
    with pytest.raises(ValueError, match=r"a\.png is \(20, 30\) .* annotation says \(21, 30\)"):
        dataset(tmp_path, data)[0]


@pytest.mark.parametrize(
    "data,message",
    [
        ('{"images": [', "is not valid JSON"),
        (mutate(lambda d: d["annotations"][2].update(image_id=9), tiny_coco), "annotation 3 refers to unknown image 9"),
        (mutate(lambda d: d["annotations"][4].update(bbox=[1, 1, -2, 3]), tiny_coco), "annotation 5 has a bad bbox"),
        (mutate(lambda d: d["images"][1].update(width=-24), tiny_coco), r"image 2 needs .* positive 'width'"),
        (mutate(lambda d: d["images"][2].pop("file_name"), tiny_coco), r"image 3 needs a 'file_name'"),
    ],
)
def test_dataset_rejects_malformed_files(tmp_path, data, message):
    images, ann = make_folder(tmp_path, data)
    with pytest.raises(ValueError, match=message) as err:
        CocoDataset(images, ann)
    assert str(ann) in str(err.value)


def test_dataloader_end_to_end(tmp_path):
    flip = RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(0))
    ds = dataset(tmp_path, transform=Compose([Resize(min_size=40, max_size=64), flip]))
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate))
    assert [b.images.shape for b in batches] == [(2, 3, 64, 64), (1, 3, 64, 64)]  # padded to 32s
    assert batches[0].image_sizes == [(40, 60), (40, 60)] and batches[1].image_sizes == [(40, 40)]
    first = batches[0].targets[0]
    assert first["image_id"] == 1 and first["orig_size"] == (20, 30) and first["scale"] == (2.0, 2.0)
    box = first["boxes"][0].tolist()  # [2, 3, 12, 8] doubled, maybe mirrored in the 60 px wide image
    assert box in ([4.0, 6.0, 24.0, 16.0], [36.0, 6.0, 56.0, 16.0])
    assert batches[1].targets[0]["boxes"].shape == (0, 4)
