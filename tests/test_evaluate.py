"""fl_lab.evaluate (COCO AP through pycocotools, batched prediction) and plots.detections."""

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fl_lab.data.shapes import Shapes
from fl_lab.data.transforms import Resize
from fl_lab.evaluate import METRICS, coco_eval, evaluate, predict
from fl_lab.model import RetinaNet
from fl_lab.plots.detections import detections_figure, label_positions


@pytest.fixture(scope="module")
def shapes():
    dataset = Shapes(8, image_size=128)
    return dataset, dataset.coco_ground_truth(), [dataset[i][1] for i in range(len(dataset))]


def as_detections(targets, boxes=None, labels=None, scores=None):
    """Ground truth fed back as detections, with any of boxes / labels / scores replaced."""
    return [
        {
            "image_id": t["image_id"],
            "boxes": t["boxes"] if boxes is None else boxes[i],
            "labels": t["labels"] if labels is None else labels[i],
            "scores": torch.ones(len(t["boxes"])) if scores is None else scores[i],
        }
        for i, t in enumerate(targets)
    ]


# ---------------------------------------------------------------- coco_eval
def test_ground_truth_as_detections_scores_one(shapes):
    dataset, gt, targets = shapes
    before = copy.deepcopy(gt)
    ap = coco_eval(gt, as_detections(targets), dataset.category_ids)
    assert list(ap) == list(METRICS) and all(type(v) is float for v in ap.values())
    # pycocotools' precision is tp / (tp + fp + eps): "1" may be 1 - 2e-16
    assert [ap[m] for m in ("AP", "AP50", "AP75", "APs", "APm")] == pytest.approx([1.0] * 5, abs=1e-12)
    assert math.isnan(ap["APl"])  # Shapes at 128 px has no object of 96² px or more
    assert gt == before  # COCOeval flags the annotations it evaluates; ours must stay untouched


def test_wrong_classes_score_about_zero(shapes):
    dataset, gt, targets = shapes
    k = dataset.num_classes
    g = torch.Generator().manual_seed(0)
    # A derangement per box: every label moves to one of the other k - 1 classes.
    wrong = [(t["labels"] + 1 + torch.randint(k - 1, t["labels"].shape, generator=g)) % k for t in targets]
    assert all((w != t["labels"]).all() for w, t in zip(wrong, targets, strict=True))
    assert coco_eval(gt, as_detections(targets, labels=wrong), dataset.category_ids)["AP"] < 0.05


def shifted(targets, fraction):
    """Boxes moved right by ``fraction`` of their width: IoU with the original (1 - f) / (1 + f)."""
    return [t["boxes"] + (t["boxes"][:, 2:3] - t["boxes"][:, 0:1]) * torch.tensor([fraction, 0, fraction, 0])
            for t in targets]


def test_shifted_boxes_fail_the_strict_iou_thresholds(shapes):
    dataset, gt, targets = shapes
    quarter = coco_eval(gt, as_detections(targets, boxes=shifted(targets, 0.25)), dataset.category_ids)  # IoU 0.6
    assert quarter["AP50"] > 0.9 and quarter["AP75"] < 0.1 and quarter["AP"] < 0.35
    half = coco_eval(gt, as_detections(targets, boxes=shifted(targets, 0.5)), dataset.category_ids)  # IoU 1/3
    assert half["AP50"] < 0.1 and half["AP75"] < 0.1


@pytest.mark.parametrize("empty", ["no dicts", "no boxes"])
def test_no_detections_score_zero(shapes, empty):
    dataset, gt, targets = shapes
    detections = [] if empty == "no dicts" else as_detections(targets, boxes=[torch.zeros(0, 4)] * 8,
                                                              labels=[torch.zeros(0, dtype=torch.long)] * 8,
                                                              scores=[torch.zeros(0)] * 8)
    ap = coco_eval(gt, detections, dataset.category_ids)
    assert [ap[m] for m in ("AP", "AP50", "AP75", "APs", "APm")] == [0.0] * 5
    assert math.isnan(ap["APl"])


def test_area_ranges_without_ground_truth_are_nan():
    gt = {
        "images": [{"id": 7, "file_name": "a.png", "width": 300, "height": 300}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 20, 150, 120], "area": 18000,
                         "iscrowd": 0}],
        "categories": [{"id": 3, "name": "big"}],
    }
    detections = [{"image_id": 7, "boxes": torch.tensor([[10.0, 20, 160, 140]]), "scores": torch.tensor([0.9]),
                   "labels": torch.tensor([0])}]
    ap = coco_eval(gt, detections, [3])
    assert ap["AP"] == pytest.approx(1.0, abs=1e-12) and ap["APl"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(ap["APs"]) and math.isnan(ap["APm"])


def test_in_memory_evaluation_equals_pycocotools_from_files(shapes, tmp_path):
    dataset, gt, targets = shapes
    g = torch.Generator().manual_seed(1)
    sides = [(t["boxes"][:, 2:] - t["boxes"][:, :2]).repeat(1, 2) for t in targets]
    boxes = [t["boxes"] + 0.1 * s * torch.randn(s.shape, generator=g)
             for t, s in zip(targets, sides, strict=True)]  # jittered
    scores = [torch.rand(len(t["boxes"]), generator=g) for t in targets]
    labels = [torch.where(torch.rand(len(t["labels"]), generator=g) < 0.2, (t["labels"] + 1) % 5, t["labels"])
              for t in targets]
    detections = as_detections(targets, boxes, labels, scores)
    ours = coco_eval(gt, detections, dataset.category_ids)

    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = [{"image_id": d["image_id"], "category_id": dataset.category_ids[k], "score": s,
                "bbox": [x1, y1, x2 - x1, y2 - y1]}
               for d in detections
               for (x1, y1, x2, y2), k, s in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist(),
                                                 strict=True)]
    (tmp_path / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(reference, reference.loadRes(str(tmp_path / "results.json")), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = [v if v >= 0 else math.nan for v in evaluator.stats[:6]]
    np.testing.assert_array_equal([ours[m] for m in METRICS], expected)
    assert 0.2 < ours["AP"] < 0.9  # jitter, random scores and wrong labels: neither perfect nor hopeless


def test_verbose_prints_the_summary_table(shapes, capsys):
    dataset, gt, targets = shapes
    coco_eval(gt, as_detections(targets), dataset.category_ids)
    assert capsys.readouterr().out == ""
    coco_eval(gt, as_detections(targets), dataset.category_ids, verbose=True)
    out = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in out
    assert "Running per image evaluation" not in out


def test_bad_detections_raise_naming_the_problem(shapes):
    dataset, gt, targets = shapes
    bad_label = as_detections(targets[:1], labels=[torch.full_like(targets[0]["labels"], 5)])
    with pytest.raises(ValueError, match="label 5"):
        coco_eval(gt, bad_label, dataset.category_ids)
    with pytest.raises(ValueError, match="label -1"):
        coco_eval(gt, as_detections(targets[:1], labels=[-torch.ones_like(targets[0]["labels"])]), dataset.category_ids)
    unknown = as_detections(targets[:1])
    unknown[0]["image_id"] = 999
    with pytest.raises(ValueError, match="image id 999"):
        coco_eval(gt, unknown, dataset.category_ids)


# ---------------------------------------------------------------- predict / evaluate
@pytest.fixture
def perfect_model(monkeypatch):
    """A real small RetinaNet whose ``detect`` returns the (resized) ground truth of each batch."""
    dataset = Shapes(5, image_size=(48, 64), transform=Resize(80, 200))
    model = RetinaNet(5, backbone="resnet18", fpn_channels=32, head_convs=1)
    calls = []

    def detect(output, image_sizes, **kwargs):
        assert not model.training and output.cls_logits.shape[0] == len(image_sizes)
        calls.append((list(image_sizes), kwargs))
        start = sum(len(sizes) for sizes, _ in calls[:-1])  # no shuffling: batches come in dataset order
        targets = [dataset[i][1] for i in range(start, start + len(image_sizes))]
        return [{"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]} for t in targets]

    monkeypatch.setattr(model, "detect", detect)
    return model, dataset, calls


def test_predict_maps_boxes_back_to_the_original_pixels(perfect_model):
    model, dataset, calls = perfect_model
    model.train()
    detections = predict(model, dataset, batch_size=3, progress=False, score_thresh=0.2)
    assert model.training  # restored
    assert [sizes for sizes, _ in calls] == [[(80, 107)] * 3, [(80, 107)] * 2]
    assert all(kwargs == {"score_thresh": 0.2} for _, kwargs in calls)
    originals = Shapes(5, image_size=(48, 64))
    assert [d["image_id"] for d in detections] == list(range(5))
    for i, det in enumerate(detections):
        target = originals[i][1]
        assert det["boxes"].dtype == torch.float32 and det["boxes"].device.type == "cpu"
        assert not torch.allclose(dataset[i][1]["boxes"], target["boxes"], atol=1)  # Resize moved them
        torch.testing.assert_close(det["boxes"], target["boxes"], atol=1e-4, rtol=0)
        assert torch.equal(det["labels"], target["labels"])


def test_evaluate_a_perfect_model_end_to_end(perfect_model):
    model, dataset, _ = perfect_model
    model.eval()
    ap = evaluate(model, dataset, batch_size=3, progress=False)
    assert [ap["AP"], ap["AP50"], ap["AP75"]] == pytest.approx([1.0] * 3, abs=1e-12)
    assert not model.training


# ---------------------------------------------------------------- detections_figure
def test_detections_figure_draws_what_passes_the_threshold():
    dataset = Shapes(3, image_size=64, max_objects=4)
    items = [dataset[i] for i in range(3)]
    g = torch.Generator().manual_seed(0)
    detections = [{"image_id": t["image_id"] + 10, "boxes": t["boxes"], "labels": t["labels"],
                   "scores": torch.rand(len(t["boxes"]), generator=g)} for _, t in items]
    fig = detections_figure([im for im, _ in items], detections, dataset.class_names, score_thresh=0.3,
                            targets=[t for _, t in items], columns=2, title="Shapes")
    assert len(fig.axes) == 4 and not fig.axes[3].axison  # 2 × 2 grid, the fourth panel unused
    shown = set()
    for ax, det, (_, target) in zip(fig.axes, detections, items, strict=False):  # the fourth axes is spare
        kept = det["scores"] >= 0.3
        n = int(kept.sum())
        assert ax.get_title() == f"image {det['image_id']}: {n} detection{'s' * (n != 1)} ≥ 0.30"
        assert ax.get_xlabel() == "x (pixels)" and ax.get_ylabel() == "y (pixels)"
        drawn = {c.get_label(): len(c.get_segments()) for c in ax.collections}
        assert drawn == {"detections": n, "ground truth": len(target["boxes"])}
        names = [text.get_text().split()[0] for text in ax.texts]
        assert names == [dataset.class_names[k] for k in det["labels"][kept].tolist()]
        shown.update(det["labels"][kept].tolist())
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == [dataset.class_names[k] for k in sorted(shown)] + ["ground truth"]
    assert fig.get_suptitle() == "Shapes"
    fig.canvas.draw()


def test_tags_of_boxes_sharing_a_corner_are_stacked_and_lone_tags_stay_at_their_corner():
    corners = [(10.0, 20.0), (11.0, 21.0), (12.0, 19.0), (60.0, 20.0), (10.0, 90.0)]
    tags = label_positions(corners, width=30.0, height=6.0)
    # the first tag, and tags far from every other, sit at their own box's corner
    assert tags[0] == (10.0, 20.0) and tags[3] == (60.0, 20.0) and tags[4] == (10.0, 90.0)
    # the near-duplicates move down (into their boxes) a line at a time, x unchanged: 21 clashes with 20 → 27;
    # 19 clashes with 20 → 25, with 27 → 31, still with 27 → 37
    assert tags[1] == (11.0, 27.0) and tags[2] == (12.0, 37.0)
    for i, (x, y) in enumerate(tags):  # no two tags overlap
        for u, v in tags[:i]:
            assert abs(x - u) >= 30.0 or abs(y - v) >= 6.0
    image = torch.rand(3, 100, 100)
    det = {"boxes": torch.tensor([[10.0, 20, 50, 60], [11, 21, 50, 60]]), "scores": torch.tensor([0.9, 0.8]),
           "labels": torch.tensor([0, 1])}
    ax = detections_figure([image], [det], ["circle", "ring"]).axes[0]
    assert [t.get_position() for t in ax.texts] == [(10.0, 20.0), (11.0, 27.0)]  # 0.06 × 100 px: one line


def test_detections_figure_with_nothing_over_the_threshold():
    image = torch.rand(3, 40, 50)
    det = {"boxes": torch.tensor([[1.0, 2, 30, 20]]), "scores": torch.tensor([0.1]), "labels": torch.tensor([0])}
    fig = detections_figure([image], [det], ["thing"], score_thresh=0.5)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "image 0: 0 detections ≥ 0.50"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["no detection ≥ 0.50"]
    fig.canvas.draw()
    with pytest.raises(ValueError, match="one detections dict"):
        detections_figure([image, image], [det], ["thing"])
