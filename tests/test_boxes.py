"""fl_lab.boxes against torchvision and a float64 reference."""

import math

import pytest
import torch
from torch.autograd import gradcheck
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.ops import batched_nms, box_iou

from fl_lab.boxes import (
    BoxCoder,
    batched_nms_in_runs,
    box_iou_batched,
    check_boxes,
    random_boxes,
    rank_in_group,
)


def pairs(n=200, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, (600, 800), 4, 600, generator=gen).to(dtype)
    anchors = random_boxes(n, (600, 800), 16, 800, generator=gen).to(dtype)
    return boxes, anchors


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_equals_torchvision(weights):
    boxes, anchors = pairs()
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    deltas = ours.encode(boxes, anchors)
    assert torch.equal(deltas, theirs.encode_single(boxes, anchors))
    noisy = deltas + torch.randn(deltas.shape, generator=torch.Generator().manual_seed(1)) * 2
    assert torch.equal(ours.decode(noisy, anchors), theirs.decode_single(noisy, anchors))


def test_encode_matches_float64_reference():
    boxes, anchors = pairs(50, dtype=torch.float64)
    expected = []
    for (bx1, by1, bx2, by2), (ax1, ay1, ax2, ay2) in zip(boxes.tolist(), anchors.tolist(), strict=True):
        aw, ah, bw, bh = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
        expected.append(
            [((bx1 + bx2) / 2 - (ax1 + ax2) / 2) / aw, ((by1 + by2) / 2 - (ay1 + ay2) / 2) / ah,
             math.log(bw / aw), math.log(bh / ah)]
        )
    torch.testing.assert_close(BoxCoder().encode(boxes, anchors), torch.tensor(expected, dtype=torch.float64))


def test_round_trip_and_leading_shapes():
    boxes, anchors = pairs(60, dtype=torch.float64)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, rtol=1e-12, atol=1e-9)
    batched = coder.encode(boxes.reshape(3, 20, 4), anchors.reshape(3, 20, 4))
    torch.testing.assert_close(batched.reshape(60, 4), coder.encode(boxes, anchors))
    shared = coder.decode(batched, anchors.reshape(3, 20, 4)[0])  # anchors broadcast over the batch
    torch.testing.assert_close(shared[0], coder.decode(batched[0], anchors[:20]))


def test_decode_in_fp32_for_half_and_clamps():
    boxes, anchors = pairs(30)
    deltas = BoxCoder().encode(boxes, anchors)
    for half in (torch.float16, torch.bfloat16):
        out = BoxCoder().decode(deltas.to(half), anchors.to(half))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, BoxCoder().decode(deltas.to(half).float(), anchors.to(half).float()))
    huge = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = BoxCoder().decode(huge, anchor)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))  # exp(log(1000/16)) · 16


def test_box_coder_gradcheck():
    boxes, anchors = pairs(6, dtype=torch.float64)
    deltas = BoxCoder().encode(boxes, anchors).requires_grad_(True)
    assert gradcheck(lambda d: BoxCoder((10, 10, 5, 5)).decode(d, anchors), (deltas,))
    assert gradcheck(lambda b: BoxCoder().encode(b, anchors), (boxes.clone().requires_grad_(True),))


def test_batched_iou_equals_torchvision_per_image():
    gen = torch.Generator().manual_seed(3)
    anchors = random_boxes(500, (320, 320), 16, 400, generator=gen)
    boxes = torch.stack([random_boxes(7, (320, 320), generator=gen) for _ in range(4)])
    boxes[2, 3] = torch.tensor([50.0, 50.0, 50.0, 90.0])  # zero width: IoU 0
    iou = box_iou_batched(boxes, anchors)
    assert iou.shape == (4, 7, 500)
    for b in range(4):
        torch.testing.assert_close(iou[b], box_iou(boxes[b], anchors))
    assert (iou[2, 3] == 0).all()
    with pytest.raises(ValueError, match=r"boxes \(B, G, 4\)"):
        box_iou_batched(boxes[0], anchors)


def test_check_boxes_names_the_bad_box():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [5, 5, 5, 9]], [[0, 0, 1, 1], [20, 0, 10, 10]]])
    with pytest.raises(ValueError, match=r"gt\[1, 1\] = \[20.0, 0.0, 10.0, 10.0\] has x2 < x1"):
        check_boxes(boxes, "gt")
    check_boxes(boxes, "gt", valid=torch.tensor([[True, True], [True, False]]))  # padding not checked
    boxes[0, 0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"gt\[0, 0\] .* is not finite"):
        check_boxes(boxes, "gt", valid=torch.tensor([[True, True], [True, False]]))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        check_boxes(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="floating-point"):
        check_boxes(torch.zeros(3, 4, dtype=torch.long))


def test_random_boxes_lie_in_the_image():
    boxes = random_boxes(1000, (300, 200), 4, 500, generator=torch.Generator().manual_seed(0))
    check_boxes(boxes)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 200 + 1e-4).all() and (boxes[:, 3] <= 300 + 1e-4).all()
    assert ((boxes[:, 2] - boxes[:, 0]) > 0).all()


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 1, 0, 1)])
def test_bad_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        BoxCoder(weights)


def test_top_k_per_group_matches_a_loop_over_groups():
    from fl_lab.boxes import top_k_per_group

    g = torch.Generator().manual_seed(0)
    group = torch.randint(0, 6, (200,), generator=g)
    score = torch.randint(0, 20, (200,), generator=g).float()  # many ties: input order breaks them
    for k in (1, 3, 50):
        expected = []
        for gid in range(7):  # group 6 is empty
            members = [i for i in range(200) if group[i] == gid]
            expected += sorted(members, key=lambda i: (-score[i].item(), i))[:k]
        assert top_k_per_group(group, score, k, 7).tolist() == expected
    assert top_k_per_group(group[:0], score[:0], 5, 7).numel() == 0


def test_rank_in_group_keeps_the_given_order():
    group = torch.tensor([2, 0, 2, 2, 0, 3])
    rank, counts = rank_in_group(group, 5)
    assert rank.tolist() == [0, 0, 1, 2, 1, 0] and counts.tolist() == [2, 0, 3, 1, 0]


def test_batched_nms_in_runs_keeps_what_torchvision_keeps():
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(600, (64, 64), 4.0, 40.0, generator=g)  # ~15 a group: runs of several groups
    scores = torch.rand(600, generator=g)
    groups = torch.randint(0, 40, (600,), generator=g)
    kept = batched_nms_in_runs(boxes, scores, groups, 0.5, 40)
    expected = batched_nms(boxes.double(), scores.double(), groups, 0.5)  # one call over all groups
    assert sorted(kept.tolist()) == sorted(expected.tolist()) and len(set(kept.tolist())) == len(kept)
    for gid in range(40):  # within each group: best score first
        mine = scores[kept[groups[kept] == gid]]
        assert bool((mine[:-1] >= mine[1:]).all())
    assert batched_nms_in_runs(boxes[:0], scores[:0], groups[:0], 0.5, 40).numel() == 0
