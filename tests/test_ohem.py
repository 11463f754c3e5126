"""fl_lab.ohem.ohem_mask / ohem_loss (§5.1, Table 1d) against a per-image Python reference."""

from __future__ import annotations

import itertools
import math
import re
from functools import partial

import pytest
import torch
from torch.autograd import gradcheck
from torchvision.ops import box_iou

import fl_lab.ohem as ohem_module
from fl_lab.boxes import BoxCoder, random_boxes
from fl_lab.detection_loss import LOSS_FUNCTIONS
from fl_lab.loss import BACKGROUND, IGNORE
from fl_lab.matcher import assign_targets, pad_targets
from fl_lab.model import RetinaNet
from fl_lab.ohem import ohem_loss, ohem_mask

torch.set_grad_enabled(True)


# ---------------------------------------------------------------- independent reference
def ref_nms(scores, boxes, labels, nms_thresh):
    """Per image, the non-ignored anchors greedy NMS keeps, in decreasing score order."""
    survivors = []
    for b in range(scores.shape[0]):
        s, lab = scores[b].tolist(), labels[b].tolist()
        iou = box_iou(boxes[b].double(), boxes[b].double()).tolist()
        kept = []
        for i in sorted((i for i in range(len(s)) if lab[i] != IGNORE), key=lambda i: -s[i]):
            if all(iou[i][j] <= nms_thresh for j in kept):
                kept.append(i)
        survivors.append(kept)
    return survivors


def ref_select(survivors, labels, batch_size, max_pos_fraction=None):
    """The top batch_size survivors of each image, or at most floor(f · batch_size) positives + negatives."""
    out = torch.zeros(labels.shape, dtype=torch.bool)
    for b, kept in enumerate(survivors):
        lab = labels[b].tolist()
        if max_pos_fraction is None:
            chosen = kept[:batch_size]
        else:
            pos = [i for i in kept if lab[i] >= 0][: math.floor(max_pos_fraction * batch_size)]
            neg = [i for i in kept if lab[i] == BACKGROUND][: batch_size - len(pos)]
            chosen = pos + neg
        out[b, chosen] = True
    return out


def ref_mask(scores, boxes, labels, batch_size, nms_thresh, max_pos_fraction=None):
    return ref_select(ref_nms(scores, boxes, labels, nms_thresh), labels, batch_size, max_pos_fraction)


def ref_ce(logits, labels, alpha=None):
    """Per-entry binary cross-entropy (B, A, K) in float64, straight from -log p_t."""
    x = logits.double()
    y = torch.zeros_like(x)
    fg = labels >= 0
    y[fg, labels[fg]] = 1.0
    p = torch.sigmoid(x)
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    if alpha is not None:
        ce = (alpha * y + (1 - alpha) * (1 - y)) * ce
    return ce * (labels != IGNORE).unsqueeze(-1)


def make_case(num_anchors=300, k=3, seed=0):
    """Five images: mixed; no positives; all ignored; 10 candidates; duplicated box pairs."""
    gen = torch.Generator().manual_seed(seed)
    images = 5
    boxes = torch.stack(
        [random_boxes(num_anchors, (128, 128), 8, 64, generator=gen) for _ in range(images)]
    ).double()
    # distinct scores within every image: a permutation, spread out
    scores = torch.randperm(images * num_anchors, generator=gen).double().reshape(images, num_anchors) / 7.0
    labels = torch.randint(IGNORE, k, (images, num_anchors), generator=gen)
    labels[1] = torch.where(labels[1] >= 0, BACKGROUND, labels[1])
    labels[2] = IGNORE
    labels[3] = IGNORE
    labels[3, torch.randperm(num_anchors, generator=gen)[:10]] = torch.tensor([0, 1, 2, 0, BACKGROUND] * 2)
    boxes[4, 1::2] = boxes[4, 0::2]  # each pair: same box, two scores
    return scores, boxes, labels


class CountingNMS:
    """Wraps batched_nms to record (number of boxes, number of images) of each call."""

    def __init__(self):
        self.calls = []
        self.nms = ohem_module.batched_nms

    def __call__(self, boxes, scores, idxs, thresh):
        self.calls.append((len(boxes), len(torch.unique(idxs))))
        return self.nms(boxes, scores, idxs, thresh)


# ---------------------------------------------------------------- ohem_mask
@pytest.mark.parametrize("nms_thresh", [0.3, 0.5, 0.7, 1.0])
def test_mask_matches_reference(nms_thresh):
    scores, boxes, labels = make_case(seed=int(nms_thresh * 10))
    survivors = ref_nms(scores, boxes, labels, nms_thresh)
    for batch_size, max_pos_fraction in itertools.product((1, 8, 32, 64), (None, 0.25, 0.5, 1.0)):
        mask = ohem_mask(scores, boxes, labels, batch_size, nms_thresh, max_pos_fraction)
        ref = ref_select(survivors, labels, batch_size, max_pos_fraction)
        assert mask.dtype == torch.bool and mask.shape == labels.shape
        assert torch.equal(mask, ref), (batch_size, max_pos_fraction, (mask != ref).nonzero()[:5].tolist())
        assert not mask[2].any()  # all ignored
        assert int(mask[3].sum()) <= 10  # fewer candidates than the minibatch
        if nms_thresh < 1:
            assert not (mask[4, 0::2] & mask[4, 1::2]).any()  # a duplicate never survives NMS
        if max_pos_fraction is None:
            assert (mask.sum(1) <= batch_size).all()
            assert int(mask[0].sum()) == batch_size  # 300 random boxes: enough survivors


def test_mask_without_nms_is_topk_and_float32_works():
    scores, boxes, labels = make_case(seed=3)
    mask = ohem_mask(scores.float(), boxes.float(), labels, batch_size=20, nms_thresh=1.0)
    ranked = scores.masked_fill(labels == IGNORE, -math.inf)
    for b in (0, 1, 4):  # plenty of candidates: exactly the 20 highest non-ignored scores
        expect = torch.zeros_like(mask[b])
        expect[ranked[b].topk(20).indices] = True
        assert torch.equal(mask[b], expect)
    assert torch.equal(mask[3], labels[3] != IGNORE)  # 10 candidates < 20: all of them


def test_top_m_doubling_is_exact(monkeypatch):
    """300 near-copies of one box top image 0's scores: only one survives in the first rounds."""
    gen = torch.Generator().manual_seed(5)
    num_anchors, batch_size = 1500, 8  # first round: top 64
    boxes = torch.stack([random_boxes(num_anchors, (256, 256), 8, 64, generator=gen) for _ in range(2)]).double()
    scores = torch.rand(2, num_anchors, generator=gen, dtype=torch.float64)
    labels = torch.randint(BACKGROUND, 3, (2, num_anchors), generator=gen)
    top = scores[0].argsort(descending=True)[:300]
    boxes[0, top] = torch.tensor([100.0, 100, 160, 150]) + torch.rand(300, 4, generator=gen, dtype=torch.float64)
    counter = CountingNMS()
    monkeypatch.setattr(ohem_module, "batched_nms", counter)
    mask = ohem_mask(scores, boxes, labels, batch_size, 0.5)
    assert torch.equal(mask, ref_mask(scores, boxes, labels, batch_size, 0.5))
    assert mask.sum(1).tolist() == [batch_size, batch_size]
    # image 1 settles in round 1; image 0 needs 64 -> 128 -> 256 -> 512 candidates
    assert [n for _, n in counter.calls] == [2, 1, 1, 1]
    assert counter.calls[-1][0] == 512


def test_top_m_easy_case_is_one_small_nms(monkeypatch):
    scores, boxes, labels = make_case(num_anchors=1200, seed=1)
    counter = CountingNMS()
    monkeypatch.setattr(ohem_module, "batched_nms", counter)
    mask = ohem_mask(scores, boxes, labels, batch_size=16)
    assert torch.equal(mask, ref_mask(scores, boxes, labels, 16, 0.5))
    # every image either has 16 survivors among its top 128 or fewer candidates than that
    assert len(counter.calls) == 1 and counter.calls[0][0] <= 5 * 128


def test_ratio_variant_doubles_until_positives_are_found(monkeypatch):
    """Positives only among the lowest scores: M must grow until they are reached."""
    gen = torch.Generator().manual_seed(7)
    num_anchors, batch_size = 1000, 8
    boxes = random_boxes(num_anchors, (512, 512), 8, 32, generator=gen).double().unsqueeze(0)
    scores = torch.rand(1, num_anchors, generator=gen, dtype=torch.float64)
    labels = torch.full((1, num_anchors), BACKGROUND)
    labels[0, scores[0].argsort()[:50]] = 1  # the 50 lowest-loss anchors are the positives
    counter = CountingNMS()
    monkeypatch.setattr(ohem_module, "batched_nms", counter)
    mask = ohem_mask(scores, boxes, labels, batch_size, 0.5, max_pos_fraction=0.25)
    assert torch.equal(mask, ref_mask(scores, boxes, labels, batch_size, 0.5, 0.25))
    assert int((mask & (labels >= 0)).sum()) == 2 and int(mask.sum()) == batch_size
    assert len(counter.calls) > 1 and counter.calls[-1][0] == num_anchors


@pytest.mark.parametrize("fraction", [0.25, 0.3, 0.5])
def test_ratio_variant_caps_positives_and_fills_with_negatives(fraction):
    gen = torch.Generator().manual_seed(11)
    num_anchors, batch_size = 400, 32
    boxes = torch.stack([random_boxes(num_anchors, (512, 512), 8, 32, generator=gen) for _ in range(3)])
    scores = torch.rand(3, num_anchors, generator=gen)
    labels = torch.full((3, num_anchors), BACKGROUND)
    labels[0, ::2] = 0  # half positives, positives score highest
    scores[0, ::2] += 1
    labels[1, :3] = 2  # only three positives
    labels[2] = 1  # no negatives at all
    mask = ohem_mask(scores, boxes, labels, batch_size, 0.5, max_pos_fraction=fraction)
    cap = math.floor(fraction * batch_size)
    pos, neg = (mask & (labels >= 0)).sum(1), (mask & (labels == BACKGROUND)).sum(1)
    assert (pos <= cap).all()
    assert pos[0] == cap and neg[0] == batch_size - cap  # capped, rest negatives
    assert pos[1] <= 3 and neg[1] == batch_size - pos[1]  # few positives: negatives fill up
    assert pos[2] == cap and neg[2] == 0  # nothing to fill with
    without = ohem_mask(scores, boxes, labels, batch_size, 0.5)
    assert int((without[0] & (labels[0] >= 0)).sum()) > cap  # the cap is what changed image 0


def test_ignored_anchors_are_never_selected():
    scores, boxes, labels = make_case(seed=2)
    scores = scores + 1e4 * (labels == IGNORE)  # ignored anchors have by far the highest scores
    for fraction in (None, 0.25):
        mask = ohem_mask(scores, boxes, labels, 64, 0.5, fraction)
        assert not (mask & (labels == IGNORE)).any()
        assert torch.equal(mask, ref_mask(scores, boxes, labels, 64, 0.5, fraction))


def test_nms_never_crosses_images_with_negative_coordinates():
    """Predicted boxes reach outside the image; batched_nms' offsets assume coordinates >= 0."""
    boxes = torch.tensor(
        [[[-39.0, -39, -29, -29], [0, 0, 10, 10]], [[-50.0, -50, -40, -40], [0, 0, 10, 10]]]
    )
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    labels = torch.full((2, 2), BACKGROUND)
    mask = ohem_mask(scores, boxes, labels, batch_size=2, nms_thresh=0.5)
    assert mask.all()  # no two boxes of one image overlap


def test_mask_empty_inputs():
    for b, a in ((0, 5), (2, 0)):
        mask = ohem_mask(torch.zeros(b, a), torch.zeros(b, a, 4), torch.zeros(b, a, dtype=torch.long))
        assert mask.shape == (b, a) and mask.dtype == torch.bool


# ---------------------------------------------------------------- ohem_loss
@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("fraction", [None, 0.25])
def test_loss_is_ce_over_reference_minibatch(alpha, fraction):
    _, boxes, labels = make_case(seed=4)
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(*labels.shape, 3, generator=gen) * 3
    ce = ref_ce(logits, labels, alpha)  # (B, A, K) float64
    ref = ref_mask(ce.sum(-1), boxes, labels, 32, 0.5, fraction)
    kw = dict(boxes=boxes, batch_size=32, nms_thresh=0.5, max_pos_fraction=fraction, alpha=alpha)
    total = ohem_loss(logits, labels, **kw)
    expect = (ce * ref.unsqueeze(-1)).sum()
    assert torch.allclose(total.double(), expect, rtol=1e-5)
    none = ohem_loss(logits, labels, "none", **kw)
    assert none.shape == logits.shape
    assert torch.equal(none != 0, ref.unsqueeze(-1).expand_as(none))  # CE > 0 on every selected entry
    assert torch.allclose(none.double(), ce * ref.unsqueeze(-1), rtol=1e-5, atol=1e-6)
    assert torch.allclose(none.sum(), total, rtol=1e-6)
    mean = ohem_loss(logits, labels, "mean", **kw)
    assert torch.allclose(mean.double(), expect / (ref.sum() * 3), rtol=1e-5)


def test_loss_all_ignored_is_zero():
    logits = torch.randn(2, 7, 3, requires_grad=True)
    labels = torch.full((2, 7), IGNORE)
    boxes = torch.tensor([0.0, 0, 10, 10]).expand(2, 7, 4)
    for reduction in ("sum", "mean"):
        out = ohem_loss(logits, labels, reduction, boxes=boxes)
        assert out.item() == 0
        out.backward()
        assert (logits.grad == 0).all()


def test_gradient_only_on_selected_anchors():
    _, boxes, labels = make_case(seed=6)
    gen = torch.Generator().manual_seed(6)
    logits = (torch.randn(*labels.shape, 3, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    ohem_loss(logits, labels, boxes=boxes, batch_size=16).backward()
    ref = ref_mask(ref_ce(logits.detach(), labels).sum(-1), boxes, labels, 16, 0.5)
    y = torch.zeros_like(logits)
    fg = labels >= 0
    y[fg, labels[fg]] = 1.0
    expect = (torch.sigmoid(logits.detach()) - y) * ref.unsqueeze(-1)  # dCE/dx = p - y
    assert torch.allclose(logits.grad, expect, rtol=1e-10, atol=1e-12)
    assert int((logits.grad.abs().sum(-1) > 0).sum()) == int(ref.sum()) > 0


@pytest.mark.parametrize("fraction", [None, 0.5])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradcheck(fraction, reduction):
    gen = torch.Generator().manual_seed(8)
    logits = (torch.randn(2, 12, 3, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    labels = torch.randint(IGNORE, 3, (2, 12), generator=gen)
    boxes = torch.stack([random_boxes(12, (40, 40), 8, 24, generator=gen) for _ in range(2)]).double()
    f = partial(ohem_loss, target=labels, reduction=reduction, boxes=boxes, batch_size=4,
                max_pos_fraction=fraction, alpha=0.25)
    assert gradcheck(lambda x: f(x), (logits,))


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size .* got 0"),
        ({"batch_size": 2.5}, "batch_size .* got 2.5"),
        ({"nms_thresh": 0}, "nms_thresh .* got 0.0"),
        ({"nms_thresh": 1.5}, "nms_thresh .* got 1.5"),
        ({"max_pos_fraction": 0}, "max_pos_fraction .* got 0.0"),
        ({"max_pos_fraction": 2}, "max_pos_fraction .* got 2.0"),
    ],
)
def test_bad_parameters(kwargs, message):
    scores, boxes, labels = torch.rand(2, 5), torch.rand(2, 5, 4), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        ohem_mask(scores, boxes, labels, **kwargs)
    with pytest.raises(ValueError, match=message):
        ohem_loss(torch.randn(2, 5, 3), labels, boxes=boxes, **kwargs)


def test_bad_shapes():
    scores, boxes, labels = torch.rand(2, 5), torch.rand(2, 5, 4), torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("(2, 5, 4), got torch.float32 (2, 5, 3)")):
        ohem_mask(scores, boxes[..., :3], labels)
    with pytest.raises(ValueError, match=re.escape("(B, A) = (2, 5), got (2, 4)")):
        ohem_mask(scores, boxes, labels[:, :4])
    with pytest.raises(ValueError, match=re.escape("scores must be a floating-point tensor (B, A), "
                                                   "got torch.float32 (10,)")):
        ohem_mask(scores.reshape(-1), boxes, labels)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        ohem_mask(scores, boxes, labels.float())
    with pytest.raises(ValueError, match=re.escape("logits (B, A, K), one row of anchors per image, got (10, 3)")):
        ohem_loss(torch.randn(10, 3), labels.reshape(-1), boxes=boxes)
    with pytest.raises(ValueError, match=re.escape("(B, A, 4) = (2, 5, 4), got torch.float32 (2, 6, 4)")):
        ohem_loss(torch.randn(2, 5, 3), labels, boxes=torch.rand(2, 6, 4))
    with pytest.raises(ValueError, match="reduction"):
        ohem_loss(torch.randn(2, 5, 3), labels, "max", boxes=boxes)
    with pytest.raises(ValueError, match="NaN"):
        ohem_mask(torch.tensor([[float("nan"), 1.0]]), torch.rand(1, 2, 4), torch.zeros(1, 2, dtype=torch.long))


# ---------------------------------------------------------------- RetinaNet.loss
@pytest.fixture(scope="module")
def model_and_output():
    torch.manual_seed(0)
    model = RetinaNet(3, backbone="resnet18", fpn_channels=32, head_convs=1)
    out = model(torch.randn(2, 3, 64, 96))
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 50, 40], [30, 5, 62, 60]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    boxes, labels, valid = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets])
    assigned = assign_targets(out.anchors, boxes, labels, valid)
    return model, out, targets, assigned.labels


def test_model_ohem_by_name(model_and_output):
    model, out, targets, _ = model_and_output
    assert LOSS_FUNCTIONS["ohem"] is ohem_loss
    losses = model.loss(out, targets, loss_fn="ohem")
    assert all(torch.isfinite(losses[k]) for k in ("cls", "box", "total"))
    # a subset of at most 2 × 128 of the 2 × 1161 anchors' CE terms
    assert 0 < losses["cls"] < model.loss(out, targets, loss_fn="ce")["cls"]
    (grad,) = torch.autograd.grad(losses["cls"], out.cls_logits, retain_graph=True)
    trained = (grad != 0).any(-1).sum(1)  # anchors with a gradient, per image
    assert (trained > 0).all() and (trained <= 128).all()


@pytest.mark.parametrize("normalize", ["batch", "per_image"])
def test_model_passes_decoded_boxes(model_and_output, normalize):
    model, out, targets, labels = model_and_output
    fn = partial(ohem_loss, batch_size=16, nms_thresh=0.4)
    cls = model.loss(out, targets, loss_fn=fn, normalize=normalize)["cls"]
    boxes = BoxCoder().decode(out.box_deltas.detach(), out.anchors)  # (B, A, 4)
    fg = (labels >= 0).sum(1)  # the second image has no objects
    if normalize == "batch":
        expect = ohem_loss(out.cls_logits, labels, boxes=boxes, batch_size=16, nms_thresh=0.4) / fg.sum().clamp(min=1)
    else:
        per_image = ohem_loss(out.cls_logits, labels, "none", boxes=boxes, batch_size=16, nms_thresh=0.4).sum((1, 2))
        expect = (per_image / fg.clamp(min=1)).mean()
    assert torch.allclose(cls, expect, rtol=1e-6)
    # the anchors themselves as boxes would pick a different minibatch
    anchors = out.anchors.expand_as(boxes)
    other = ohem_loss(out.cls_logits, labels, boxes=anchors, batch_size=16, nms_thresh=0.4)
    assert not torch.allclose(other, ohem_loss(out.cls_logits, labels, boxes=boxes, batch_size=16, nms_thresh=0.4))
