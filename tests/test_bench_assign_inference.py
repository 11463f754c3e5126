"""bench/assign.py and bench/inference.py run end to end; the fast paths they measure equal plain references."""

import json

import pytest
import torch
from bench_scripts import load
from torchvision.ops import batched_nms

import fl_lab.matcher
from fl_lab.anchors import AnchorGenerator
from fl_lab.boxes import BoxCoder, box_iou_batched, random_boxes
from fl_lab.matcher import Matcher, assign_targets, pad_targets
from fl_lab.model import RetinaNet, RetinaNetOutput


@pytest.mark.parametrize("name, num_rows", [("assign", 1), ("inference", 2)])
def test_script_runs_and_writes_its_json(name, num_rows, tmp_path, capsys):
    payload = load(name).main(["--quick", "--device", "cpu", "--repeats", "1", "--results", str(tmp_path)])
    assert len(payload["rows"]) == num_rows
    for row in payload["rows"]:
        assert row["fl_lab_ms"] > 0 and row["torchvision_ms"] > 0
        assert row["speedup"] == pytest.approx(row["torchvision_ms"] / row["fl_lab_ms"])
    assert payload["table"] in capsys.readouterr().out
    written = json.loads((tmp_path / f"{name}_cpu.json").read_text())
    assert written["rows"] == json.loads(json.dumps(payload["rows"])) and written["table"] == payload["table"]


# ------------------------------------------------------------------ assign_targets, a slice of anchors at a time
@pytest.mark.parametrize("seed", range(6))
def test_assign_targets_in_slices_equals_the_dense_matcher(seed, monkeypatch):
    """Slices of ~100 (box, anchor) pairs: a box's best anchors (ties included) may lie in several slices."""
    monkeypatch.setattr(fl_lab.matcher, "_CPU_CHUNK", 100)
    gen = torch.Generator().manual_seed(seed)
    size = (96, 128)
    anchors = AnchorGenerator().gen(size)
    boxes = [(random_boxes(n, size, 4, 120, generator=gen) / 8).round() * 8 for n in (3, 0, 5, 1)]  # exact ties
    boxes[0][0] = torch.tensor([500.0, 500, 510, 510])  # overlaps no anchor: left out
    boxes[3][0] = torch.tensor([20.0, 20, 20, 40])  # zero width: the image's only box is left out
    labels = [torch.randint(0, 4, (len(b),), generator=gen) for b in boxes]
    gt, lab, valid = pad_targets(boxes, labels)
    iou = box_iou_batched(gt, anchors)
    for matcher in (Matcher(), Matcher(allow_low_quality=False), Matcher(0.3, 0.0)):
        expected = matcher(iou, valid & (iou.amax(dim=2) > 0))
        assert torch.equal(assign_targets(anchors, gt, lab, valid, matcher).matches, expected)


# ------------------------------------------------------------------ RetinaNet.detect against a per-image reference
def reference_detect(output, image_sizes, score_thresh=0.05, topk=1000, nms_thresh=0.5, max_detections=100):
    """Detection as torchvision's postprocess_detections does it: image by image, level by level."""
    coder, num_classes = BoxCoder(), output.cls_logits.shape[2]
    detections = []
    for b, (h, w) in enumerate(image_sizes):
        boxes, scores, labels, start = [], [], [], 0
        for n in output.anchors_per_level:
            s = output.cls_logits[b, start : start + n].sigmoid().flatten()
            idx = torch.nonzero(s > score_thresh).squeeze(1)
            s, top = s[idx].topk(min(topk, len(idx)))
            idx = idx[top]
            anchor = start + idx // num_classes
            bx = coder.decode(output.box_deltas[b, anchor], output.anchors[anchor])
            boxes.append(torch.stack([bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h), bx[:, 2].clamp(0, w),
                                      bx[:, 3].clamp(0, h)], dim=1))
            scores.append(s)
            labels.append(idx % num_classes)
            start += n
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("settings", [{}, {"topk": 40}, {"nms_thresh": 0.3, "max_detections": 300},
                                      {"score_thresh": 0.3, "topk": 10, "max_detections": 5}])
def test_detect_equals_a_per_image_reference(seed, settings):
    gen = torch.Generator().manual_seed(seed)
    num_classes, size = (3, 7)[seed % 2], ((128, 128), (192, 256))[seed % 2]
    generator = AnchorGenerator()
    anchors = generator.gen(size)
    batch = 1 + seed % 3
    logits = -3.0 + torch.randn(batch, len(anchors), num_classes, generator=gen)  # hundreds of candidates per image
    if seed % 2 and batch > 1:
        logits[0] = -20.0  # an image with no score above the threshold
    deltas = 0.2 * torch.randn(batch, len(anchors), 4, generator=gen)
    output = RetinaNetOutput(logits, deltas, anchors, generator.num_anchors_per_level(size))
    sizes = [(size[0] - 7 * i, size[1] - 3 * i) for i in range(batch)]  # clipped to each image's own size
    model = RetinaNet(num_classes, backbone="resnet18", fpn_channels=32, head_convs=0)
    ours, expected = model.detect(output, sizes, **settings), reference_detect(output, sizes, **settings)
    for det, ref in zip(ours, expected, strict=True):
        assert len(det["boxes"]) == len(ref["boxes"])
        assert det["labels"].dtype == torch.int64 and torch.all(det["scores"][:-1] >= det["scores"][1:])
        # In (class, box) order: detections of equal score may come in either order. Scores are the
        # same up to rounding (a sigmoid over a differently laid out tensor).
        mine, theirs = (sorted(zip(d["labels"].tolist(), d["boxes"].tolist(), d["scores"].tolist(), strict=True))
                        for d in (det, ref))
        assert [m[:2] for m in mine] == [t[:2] for t in theirs]
        torch.testing.assert_close(torch.tensor([m[2] for m in mine]), torch.tensor([t[2] for t in theirs]),
                                   rtol=1e-6, atol=0)
    assert sum(len(d["boxes"]) for d in ours) > 0
