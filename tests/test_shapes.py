"""fl_lab.data.shapes: deterministic items, tight boxes, the occlusion rule, COCO export."""

import json

import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

from fl_lab.data import shapes
from fl_lab.data.coco import CocoDataset, load_coco_annotations
from fl_lab.data.shapes import SHAPES, Shapes


def same(a, b):
    return (torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
            and torch.equal(a[1]["labels"], b[1]["labels"]))


def extent(mask):
    """x1, y1, x2, y2 of the pixels set in a (H, W) bool mask, in pixel-edge coordinates."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_items_are_deterministic_in_any_order():
    ds = Shapes(6, image_size=96)
    first = ds[4]
    for i in range(6):
        ds[i]
    assert same(first, ds[4]) and same(first, Shapes(6, image_size=96)[4])
    assert not torch.equal(ds[0][0], ds[1][0])
    assert not torch.equal(first[0], Shapes(6, image_size=96, seed=1)[4][0])


def test_item_layout_types_and_ranges():
    ds = Shapes(12, image_size=(96, 160), num_classes=3)
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 96, 160) and image.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and target["image_id"] == i
        assert boxes.shape == (len(labels), 4) and len(labels) >= 1
        assert ((labels >= 0) & (labels < 3)).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()  # no zero-area box
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 96).all()


def test_object_counts_stay_between_min_and_max():
    counts = [len(Shapes(40, image_size=64, min_objects=3, max_objects=7, min_size=8)[i][1]["labels"])
              for i in range(40)]
    assert min(counts) >= 3 and max(counts) <= 7 and len(set(counts)) >= 3
    image, target = Shapes(1, image_size=64, min_objects=0, max_objects=0)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_every_class_appears_and_names_follow_the_table():
    ds = Shapes(50, image_size=64, num_classes=len(SHAPES), max_objects=10)
    seen = set()
    for i in range(len(ds)):
        seen.update(ds[i][1]["labels"].tolist())
    assert seen == set(range(len(SHAPES)))
    small = Shapes(1, num_classes=4)
    assert small.class_names == list(SHAPES)[:4] and small.category_ids == [1, 2, 3, 4] and small.num_classes == 4


def test_every_shape_fills_its_frame():
    # Each signed distance is negative on a sizeable part of [-1, 1]^2 and nowhere outside it.
    side = torch.linspace(-1.5, 1.5, 301)
    v, u = torch.meshgrid(side, side, indexing="ij")
    frame = (u.abs() <= 1.001) & (v.abs() <= 1.001)
    for name, (sdf, _) in SHAPES.items():
        inside = sdf(u, v) <= 0
        assert not (inside & ~frame).any(), name
        assert inside.sum() > 0.2 * frame.sum(), name


def test_sizes_cover_every_pyramid_level_at_512():
    ds = Shapes(12, image_size=512, min_objects=10, max_objects=20)
    boxes = torch.cat([ds[i][1]["boxes"] for i in range(len(ds))])
    sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    assert sides.min() < 40 and sides.max() > 256
    # Objects for every level P3-P7 (anchor sides 32, 64, ..., 512): each octave is populated.
    for low in (32, 64, 128, 256):
        assert ((sides >= low) & (sides < 2 * low)).any(), low


@pytest.mark.parametrize("size,objects", [(128, 10), (96, 1), (256, 4), ((96, 160), 6)])
def test_every_object_has_an_anchor_with_iou_at_least_one_half(size, objects):
    # The paper's anchors (P3-P7, 32-813 px) against the default object sizes: every object gets a
    # foreground anchor under the paper's 0.5 rule. Best IoU computed here by brute force over
    # the anchors, independently of fl_lab.analysis.anchor_coverage.
    from torchvision.ops import box_iou

    from fl_lab.anchors import AnchorGenerator

    ds = Shapes(150, image_size=size, max_objects=objects, seed=5)
    anchors = AnchorGenerator().gen(ds.image_size, dtype=torch.float64)
    best = torch.cat([box_iou(ds[i][1]["boxes"].double(), anchors).amax(1) for i in range(len(ds))])
    assert len(best) >= 150 and float(best.min()) >= 0.5, float(best.min())


def test_objects_below_the_smallest_anchor_lose_their_foreground_anchor():
    # The reason for the default: 8-px objects have no anchor with IoU >= 0.5.
    from fl_lab.analysis import anchor_coverage

    assert anchor_coverage(Shapes(30, image_size=128, max_objects=10, min_size=8, max_size=16)).unmatched_share == 1.0
    assert anchor_coverage(Shapes(30, image_size=128, max_objects=10)).unmatched_share == 0.0


def test_empty_fraction_draws_images_without_objects():
    counts = torch.tensor([len(t["labels"])
                           for _, t in Shapes(300, image_size=64, max_objects=1, empty_fraction=5 / 6)])
    empty = float((counts == 0).float().mean())
    assert abs(empty - 5 / 6) < 4 * (5 / 36 / 300) ** 0.5, empty  # within 4 binomial standard deviations
    assert all(len(t["labels"]) == 0 for _, t in Shapes(20, image_size=64, empty_fraction=1.0))
    # 0 keeps the random stream of a dataset without the knob: the same images
    plain, zero = Shapes(3, image_size=64), Shapes(3, image_size=64, empty_fraction=0.0)
    assert all(torch.equal(plain[i][0], zero[i][0]) for i in range(3))


def test_boxes_are_the_extent_of_each_mask():
    ds = Shapes(10, image_size=128, num_classes=9, distractors=False)
    for i in range(len(ds)):
        image, target, masks = ds._generate(i, with_masks=True)
        assert masks.shape == (len(target["labels"]), 128, 128)
        assert [extent(m) for m in masks] == target["boxes"].int().tolist()
        assert torch.equal(target["boxes"], target["boxes"].round())  # pixel edges, nothing to round


def test_box_is_tight_around_the_drawn_pixels():
    # One object on a known background: the pixels it changed (anti-aliased fringe included)
    # reach the box and lie at most a fringe (2 px) outside it.
    ds = Shapes(12, image_size=96, num_classes=9, min_objects=1, max_objects=1, distractors=False)
    for i in range(len(ds)):
        image, target = ds[i]
        background = shapes._background(torch.Generator().manual_seed(ds._item_seed(i)), 96, 96)
        drawn = extent((image - background).abs().amax(0) > 1e-6)
        (x1, y1, x2, y2), = target["boxes"].tolist()
        assert drawn[0] <= x1 <= drawn[0] + 2 and drawn[1] <= y1 <= drawn[1] + 2, (i, drawn, target["boxes"])
        assert drawn[2] - 2 <= x2 <= drawn[2] and drawn[3] - 2 <= y2 <= drawn[3], (i, drawn, target["boxes"])


def test_no_object_is_more_than_half_hidden():
    ds = Shapes(8, image_size=96, num_classes=9, min_objects=25, max_objects=30, min_size=8)
    occluded = 0
    for i in range(len(ds)):
        _, target, masks = ds._generate(i, with_masks=True)
        assert len(masks) >= 25
        for j in range(len(masks)):
            visible = masks[j] & ~masks[j + 1 :].any(0)
            assert 2 * visible.sum() >= masks[j].sum(), (i, j)
            occluded += int(visible.sum() < masks[j].sum())
    assert occluded > 20  # the rule was exercised, not vacuous


def test_coco_ground_truth_matches_targets():
    ds = Shapes(5, image_size=(64, 80), num_classes=4)
    gt = ds.coco_ground_truth()
    assert gt["images"] == [{"id": i, "file_name": f"{i:06d}.png", "width": 80, "height": 64} for i in range(5)]
    assert gt["categories"] == [{"id": k + 1, "name": n} for k, n in enumerate(list(SHAPES)[:4])]
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    for i in range(5):
        target = ds[i][1]
        anns = [a for a in gt["annotations"] if a["image_id"] == i]
        xywh = target["boxes"].clone()
        xywh[:, 2:] -= xywh[:, :2]
        assert [a["bbox"] for a in anns] == xywh.tolist()
        assert [a["category_id"] for a in anns] == (target["labels"] + 1).tolist()
        assert [a["area"] for a in anns] == (xywh[:, 2] * xywh[:, 3]).tolist()
        assert all(a["iscrowd"] == 0 for a in anns)


def test_to_coco_writes_pngs_and_a_loadable_json(tmp_path):
    from pycocotools.coco import COCO

    ds = Shapes(4, image_size=64, num_classes=3)
    path = ds.to_coco(tmp_path / "out")
    assert path == tmp_path / "out" / "instances.json"
    assert json.loads(path.read_text()) == ds.coco_ground_truth()
    for i in range(4):
        png = torchvision.io.read_image(str(tmp_path / "out" / "images" / f"{i:06d}.png"))
        assert torch.equal(png, (ds[i][0] * 255).round().to(torch.uint8))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 4 and len(coco.getCatIds()) == 3
    assert len(coco.getAnnIds()) == sum(len(ds[i][1]["labels"]) for i in range(4))
    ann = load_coco_annotations(path)  # and fl_lab's reader gives back the very same targets
    assert all(torch.equal(ann.boxes[i], ds[i][1]["boxes"]) and torch.equal(ann.labels[i], ds[i][1]["labels"])
               for i in range(4))
    # ... and so does the COCO dataset: the same items, pixels within PNG quantisation.
    coco_ds = CocoDataset(tmp_path / "out" / "images", path)
    assert coco_ds.class_names == ds.class_names and len(coco_ds) == 4
    for i in range(4):
        (image, target), (expected, expected_target) = coco_ds[i], ds[i]
        assert (image - expected).abs().max() <= 0.5 / 255 + 1e-6
        assert torch.equal(target["boxes"], expected_target["boxes"]) and target["image_id"] == i


def test_shuffled_dataloader_gives_the_indexed_items():
    ds = Shapes(7, image_size=64)
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=0, collate_fn=list,
                        generator=torch.Generator().manual_seed(0))
    items = [item for batch in loader for item in batch]
    order = [target["image_id"] for _, target in items]
    assert sorted(order) == list(range(7)) and order != list(range(7))
    assert all(same(item, ds[item[1]["image_id"]]) for item in items)


def test_indexing_stops_and_wraps_like_a_sequence():
    ds = Shapes(3, image_size=64)
    with pytest.raises(IndexError, match="index 3"):
        ds[3]
    assert len(list(ds)) == 3 and same(ds[-1], ds[2]) and len(Shapes(0)) == 0


def test_transform_is_applied_last():
    def flip(image, target):
        return image.flip(-1), {**target, "boxes": target["boxes"] * 0}

    plain, flipped = Shapes(2, image_size=64)[1], Shapes(2, image_size=64, transform=flip)[1]
    assert torch.equal(flipped[0], plain[0].flip(-1)) and not flipped[1]["boxes"].any()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(num_images=-1), "num_images must be >= 0, got -1"),
        (dict(image_size=31), "got 31"),
        (dict(image_size=(64, 16)), r"got \(64, 16\)"),
        (dict(num_classes=0), "got 0"),
        (dict(num_classes=len(SHAPES) + 1), f"got {len(SHAPES) + 1}"),
        (dict(min_objects=5, max_objects=2), "min_objects=5, max_objects=2"),
        (dict(min_objects=-1), "min_objects=-1"),
        (dict(min_size=50.0, max_size=20.0), "min_size=50.0, max_size=20.0"),
        (dict(min_size=0.0), "min_size=0.0"),
        (dict(image_size=40), "pass a smaller min_size"),
        (dict(empty_fraction=1.5), "empty_fraction"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Shapes(**{"num_images": 2, **kwargs})
