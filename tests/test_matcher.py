"""fl_lab.matcher against torchvision's Matcher, a pure-Python reference, and per-image matching."""

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.ops import box_iou

from fl_lab.anchors import AnchorGenerator
from fl_lab.boxes import BoxCoder, random_boxes
from fl_lab.matcher import Matcher, assign_targets, pad_targets


def reference_match(iou, fg=0.5, bg=0.4, low_quality=True):
    """The rule in plain Python: best box per anchor (first on ties), thresholds, then each
    box's best anchors (all ties) restored to their best box."""
    num_gt, num_anchors = len(iou), len(iou[0]) if iou else 0
    if num_gt == 0:
        return [-1] * num_anchors
    out, best = [], []
    for a in range(num_anchors):
        col = [iou[g][a] for g in range(num_gt)]
        g_best = col.index(max(col))
        best.append(g_best)
        v = col[g_best]
        out.append(-1 if v < bg else -2 if v < fg else g_best)
    if low_quality:
        for g in range(num_gt):
            top = max(iou[g])
            for a in range(num_anchors):
                if iou[g][a] == top:
                    out[a] = best[a]
    return out


def random_iou(seed, num_gt=5, num_anchors=60, quantise=True):
    gen = torch.Generator().manual_seed(seed)
    iou = torch.rand(num_gt, num_anchors, generator=gen, dtype=torch.float64) * 0.9
    if quantise:  # coarse values: many exact ties, and values exactly on the thresholds
        iou = (iou * 10).round() / 10
    return iou.float()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("low_quality", [True, False])
def test_equals_torchvision_and_reference(seed, low_quality):
    iou = random_iou(seed, num_gt=1 + seed % 6, quantise=seed % 2 == 0)
    ours = Matcher(0.5, 0.4, low_quality)(iou)
    assert torch.equal(ours, TVMatcher(0.5, 0.4, allow_low_quality_matches=low_quality)(iou))
    assert ours.tolist() == reference_match(iou.tolist(), low_quality=low_quality)


def test_crafted_ties_and_thresholds():
    iou = torch.tensor(
        [
            [0.5, 0.4, 0.39, 0.7, 0.7, 0.1],
            [0.5, 0.45, 0.2, 0.7, 0.6, 0.1],  # anchor 0 and 3: equal IoU with boxes 0 and 1
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.3],  # box 2's best anchor is only 0.3: a low-quality match
        ]
    )
    strict = Matcher(allow_low_quality=False)(iou)
    assert strict.tolist() == [0, -2, -1, 0, 0, -1]  # 0.5 is foreground, 0.4 ignored, 0.39 background
    ours = Matcher()(iou)
    assert ours.tolist() == [0, -2, -1, 0, 0, 2] == TVMatcher(0.5, 0.4, True)(iou).tolist()


def test_no_boxes_gives_background():
    assert (Matcher()(torch.zeros(0, 7)) == -1).all()
    batched = Matcher()(torch.zeros(2, 0, 7))
    assert batched.shape == (2, 7) and (batched == -1).all()
    # assign_targets on a batch in which no image has a box: all background, no box targets.
    anchors = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]])
    out = assign_targets(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long))
    assert out.labels.tolist() == [[-1, -1], [-1, -1]] and out.num_foreground == 0
    assert torch.equal(out.box_targets, torch.zeros(2, 2, 4))


@pytest.mark.parametrize("low_quality", [True, False])
def test_batched_equals_per_image(low_quality):
    gen = torch.Generator().manual_seed(0)
    counts = [3, 0, 6, 1]
    mats = [((torch.rand(g, 80, generator=gen) * 10).round() / 10) for g in counts]
    padded = torch.full((4, 6, 80), 0.77)  # padding with a value that would win if not masked
    valid = torch.zeros(4, 6, dtype=torch.bool)
    for i, m in enumerate(mats):
        padded[i, : len(m)] = m
        valid[i, : len(m)] = True
    matcher = Matcher(allow_low_quality=low_quality)
    batched = matcher(padded, valid)
    for i, m in enumerate(mats):
        assert torch.equal(batched[i], matcher(m)), i


def test_matcher_rejects_bad_input():
    with pytest.raises(ValueError, match="bg_iou <= fg_iou"):
        Matcher(0.4, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        Matcher()(torch.tensor([[0.1, float("nan")]]))
    with pytest.raises(ValueError, match="float tensor"):
        Matcher()(torch.zeros(4))
    with pytest.raises(ValueError, match="valid must have shape"):
        Matcher()(torch.zeros(2, 3, 5), torch.ones(2, 2, dtype=torch.bool))


def batch(seed=0, counts=(4, 0, 9, 2), size=(256, 320)):
    gen = torch.Generator().manual_seed(seed)
    boxes = [random_boxes(n, size, 8, 300, generator=gen) for n in counts]
    labels = [torch.randint(0, 5, (n,), generator=gen) for n in counts]
    return boxes, labels


def test_assign_targets_equals_torchvision_per_image():
    size = (256, 320)
    anchors = AnchorGenerator().gen(size)
    boxes, labels = batch(size=size)
    targets = assign_targets(anchors, *pad_targets(boxes, labels), num_classes=5)
    tv_matcher, tv_coder = TVMatcher(0.5, 0.4, True), TVBoxCoder((1.0, 1.0, 1.0, 1.0))
    for i, (b, c) in enumerate(zip(boxes, labels, strict=True)):
        if len(b) == 0:
            assert (targets.labels[i] == -1).all() and (targets.box_targets[i] == 0).all()
            continue
        matches = tv_matcher(box_iou(b, anchors))
        assert torch.equal(targets.matches[i], matches)
        fg = matches >= 0
        expected_labels = torch.where(fg, c[matches.clamp(min=0)], matches)
        assert torch.equal(targets.labels[i], expected_labels)
        expected_boxes = tv_coder.encode_single(b[matches[fg]], anchors[fg])
        torch.testing.assert_close(targets.box_targets[i][fg], expected_boxes)
        assert (targets.box_targets[i][~fg] == 0).all()
    assert targets.num_foreground == int((targets.labels >= 0).sum()) > 0


def test_box_targets_decode_to_the_matched_box():
    size = (256, 320)
    anchors = AnchorGenerator().gen(size)
    boxes, labels = batch(seed=1, size=size)
    gt, lab, valid = pad_targets(boxes, labels)
    t = assign_targets(anchors, gt, lab, valid)
    img, anc = torch.nonzero(t.foreground, as_tuple=True)
    decoded = BoxCoder().decode(t.box_targets[img, anc], anchors[anc])
    torch.testing.assert_close(decoded, gt[img, t.matches[img, anc]], rtol=1e-5, atol=1e-3)


def test_unmatchable_boxes_are_left_out():
    """Zero-area boxes and boxes beyond every anchor would otherwise make all anchors low-quality matches."""
    size = (128, 128)
    anchors = AnchorGenerator().gen(size)
    gt = torch.tensor([[[30.0, 30, 30, 60], [5000, 5000, 5010, 5010], [10, 10, 60, 70]]])
    t = assign_targets(anchors, gt, torch.tensor([[0, 1, 2]]))
    assert set(t.labels[t.foreground].tolist()) == {2}
    only_real = assign_targets(anchors, gt[:, 2:], torch.tensor([[2]]))
    assert torch.equal(t.labels, only_real.labels)
    # Partly outside the image is fine: it is matched like any box.
    edge = assign_targets(anchors, torch.tensor([[[-20.0, -20, 40, 40]]]), torch.tensor([[1]]))
    assert edge.num_foreground > 0


def test_assign_targets_rejects_bad_input():
    anchors = AnchorGenerator().gen((64, 64))
    with pytest.raises(ValueError, match=r"gt_boxes\[0, 1\] = \[10.0, 10.0, 5.0, 20.0\] has x2 < x1"):
        assign_targets(anchors, torch.tensor([[[0.0, 0, 5, 5], [10, 10, 5, 20]]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="not finite"):
        assign_targets(anchors, torch.tensor([[[0.0, float("nan"), 5, 5]]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="class 7; classes must be 0..4"):
        assign_targets(anchors, torch.tensor([[[0.0, 0, 5, 5]]]), torch.tensor([[7]]), num_classes=5)
    with pytest.raises(ValueError, match=r"gt_labels \(B, G\)"):
        assign_targets(anchors, torch.zeros(1, 2, 4), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        assign_targets(anchors, torch.tensor([[[0.0, 0, 5, 5]]]), torch.tensor([[0.0]]))
    with pytest.raises(ValueError, match="anchors must be"):
        assign_targets(anchors[:, :3], torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long))


def test_pad_targets():
    boxes, labels = batch(counts=(2, 0, 3))
    gt, lab, valid = pad_targets(boxes, labels)
    assert gt.shape == (3, 3, 4) and lab.shape == (3, 3) and valid.sum(1).tolist() == [2, 0, 3]
    assert torch.equal(gt[2], boxes[2]) and (lab[1] == -1).all()
    with pytest.raises(ValueError, match=r"image 1: boxes must be \(G, 4\)"):
        pad_targets([boxes[0], torch.zeros(3)], [labels[0], torch.zeros(3, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"boxes\[0, 0\] = \[5.0, 0.0, 1.0, 1.0\] has x2 < x1"):
        pad_targets([torch.tensor([[5.0, 0, 1, 1]])], [torch.tensor([0])])
    for bad in (torch.tensor([1.7]), torch.tensor([True])):  # cast to int64 they would become other labels
        with pytest.raises(ValueError, match=f"image 0: labels must be an integer tensor .*{bad.dtype}"):
            pad_targets([torch.tensor([[0.0, 0, 4, 4]])], [bad])
    assert pad_targets([torch.tensor([[0.0, 0, 4, 4]])], [torch.tensor([3], dtype=torch.int32)])[1].tolist() == [[3]]
