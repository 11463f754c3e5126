"""Lesson 3: box coding (what the box subnet predicts) and non-maximum suppression (what inference keeps)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, nms

from ..boxes import BoxCoder
from .checking import Feedback, _Case, _check, _Exercise, _Invalid, _like, _returned, _tensor

__all__ = ["check_box_coding", "check_nms"]

CLAMP = math.log(1000.0 / 16)  # the cap on t_w, t_h before exp (torchvision's and detectron2's)
_WILD = "t_w, t_h of 100 (a wild prediction)"
WEIGHTS = ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0))  # RetinaNet's, Faster R-CNN's


# ------------------------------------------------------------------ encode / decode
def _centre_size(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return b[:, 0] + w / 2, b[:, 1] + h / 2, w, h


def _encode_variant(boxes: Tensor, anchors: Tensor, weights: tuple, corners: bool = False, log: bool = True,
                    swap: bool = False, divide: bool = False) -> Tensor:
    """The parametrisation with one piece changed (the known mistakes); all flags off: correct."""
    wx, wy, ww, wh = weights
    if divide:
        wx, wy, ww, wh = 1 / wx, 1 / wy, 1 / ww, 1 / wh
    x, y, w, h = _centre_size(boxes)
    ax, ay, aw, ah = _centre_size(anchors)
    if corners:
        x, y, ax, ay = boxes[:, 0], boxes[:, 1], anchors[:, 0], anchors[:, 1]
    size = torch.log if log else (lambda r: r - 1)
    t = torch.stack((wx * (x - ax) / aw, wy * (y - ay) / ah, ww * size(w / aw), wh * size(h / ah)), dim=1)
    return t[:, [1, 0, 3, 2]] if swap else t


def _decode_variant(deltas: Tensor, anchors: Tensor, weights: tuple, clamp: bool = True, corners: bool = False,
                    exp: bool = True, divide: bool = True, centre_size: bool = False, full_width: bool = False
                    ) -> Tensor:
    wx, wy, ww, wh = weights if divide else tuple(1 / w for w in weights)
    ax, ay, aw, ah = _centre_size(anchors)
    dx, dy, dw, dh = deltas[:, 0] / wx, deltas[:, 1] / wy, deltas[:, 2] / ww, deltas[:, 3] / wh
    if clamp:
        dw, dh = dw.clamp(max=CLAMP), dh.clamp(max=CLAMP)
    grow = torch.exp if exp else (lambda d: 1 + d)
    w, h = grow(dw) * aw, grow(dh) * ah
    if corners:
        x1, y1 = anchors[:, 0] + dx * aw, anchors[:, 1] + dy * ah
        return torch.stack((x1, y1, x1 + w, y1 + h), dim=1)
    x, y = ax + dx * aw, ay + dy * ah
    if centre_size:
        return torch.stack((x, y, w, h), dim=1)
    half = 1.0 if full_width else 0.5
    return torch.stack((x - half * w, y - half * h, x + half * w, y + half * h), dim=1)


def _coding_cases(huge: bool) -> tuple[_Case, ...]:
    """Boxes, anchors and deltas of varied sizes and aspect ratios, each with unit and Faster R-CNN weights;
    ``huge``: one more case with t_w, t_h of 100, the wild prediction the clamp exists for."""
    g = torch.Generator().manual_seed(11)
    centre = torch.rand(12, 2, generator=g) * 200
    size = torch.exp(torch.rand(12, 2, generator=g) * 3) * 10  # 10-200 px, all aspect ratios
    anchors = torch.cat((centre - size / 2, centre + size / 2), dim=1)
    shift = (torch.rand(12, 2, generator=g) - 0.5) * size
    scale = torch.exp((torch.rand(12, 2, generator=g) - 0.5) * 2)
    boxes = torch.cat((centre + shift - scale * size / 2, centre + shift + scale * size / 2), dim=1)
    deltas = torch.randn(12, 4, generator=g)
    first = boxes if not huge else deltas
    cases = [_Case(f"12 boxes, weights {w}", (first, anchors, w)) for w in WEIGHTS]
    if huge:
        wild = torch.tensor([[0.1, -0.2, 100.0, 100.0], [0.0, 0.0, 50.0, -1.0]])
        cases.append(_Case(_WILD, (wild, anchors[:2], WEIGHTS[0])))
    return tuple(cases)


def _run_encode(fn: Callable, args: tuple) -> Tensor:
    return _tensor(fn(*args), (args[0].shape[0], 4), "the deltas (t_x, t_y, t_w, t_h per row)")


def _run_decode(fn: Callable, args: tuple) -> Tensor:
    return _tensor(fn(*args), (args[0].shape[0], 4), "the boxes (x1, y1, x2, y2 per row)")


def _reference_encode(boxes: Tensor, anchors: Tensor, weights: tuple) -> Tensor:
    return BoxCoder(weights).encode(boxes, anchors)


def _reference_decode(deltas: Tensor, anchors: Tensor, weights: tuple) -> Tensor:
    return BoxCoder(weights, clamp=CLAMP).decode(deltas, anchors)


_CENTRE = ("The offsets are between *centres*: x = (x1 + x2) / 2, and t_x = w_x (x − x_a) / w_a. Using the "
           "top-left corners gives other numbers whenever box and anchor differ in size.")
_SWAP = "Your t_x and t_y (or t_w and t_h) are swapped: the order is (t_x, t_y, t_w, t_h), x horizontal, y vertical."
_ENCODE_MISTAKES = (
    (_like(lambda b, a, w: _encode_variant(b, a, w, corners=True)), _CENTRE),
    (_like(lambda b, a, w: _encode_variant(b, a, w, log=False)),
     "The sizes are coded as logarithms: t_w = w_w log(w / w_a). A ratio (minus 1) is wrong for any box not close "
     "to its anchor's size, and a log keeps a predicted size positive after exp."),
    (_like(lambda b, a, w: _encode_variant(b, a, w, swap=True)), _SWAP),
    (_like(lambda b, a, w: _encode_variant(b, a, w, divide=True)),
     "The weights multiply the offsets when encoding (t_x = w_x (x − x_a) / w_a) and divide them when decoding; "
     "yours divide here."),
)
_DECODE_MISTAKES = (
    (lambda trial: trial.wrong == [_WILD],
     "Clamp t_w and t_h at log(1000 / 16) ≈ 4.135 before exp: a wild prediction of 100 makes a box 10^43 times "
     "its anchor — infinite in float32 (exp(100) > 3.4·10^38)."),
    (_like(lambda d, a, w: _decode_variant(d, a, w, corners=True)), _CENTRE),
    (_like(lambda d, a, w: _decode_variant(d, a, w, exp=False)),
     "Undo the log: w = exp(t_w / w_w) · w_a, not (1 + t_w / w_w) · w_a."),
    (_like(lambda d, a, w: _decode_variant(d, a, w, divide=False)),
     "When decoding, divide the deltas by the weights (t_x / w_x): encoding multiplied them."),
    (_like(lambda d, a, w: _decode_variant(d, a, w, centre_size=True)),
     "Return corners (x1, y1, x2, y2), not (centre x, centre y, width, height)."),
    (_like(lambda d, a, w: _decode_variant(d, a, w, full_width=True)),
     "x1 = x − w / 2 and x2 = x + w / 2: half the width on each side of the centre, not all of it."),
    (_like(lambda d, a, w: _decode_variant(d, a, w)[:, [1, 0, 3, 2]]), _SWAP),
)
_ENCODE = _Exercise("encode", _reference_encode, _run_encode, _coding_cases(huge=False), _ENCODE_MISTAKES,
                    "Correct encoding.")
_DECODE = _Exercise("decode", _reference_decode, _run_decode, _coding_cases(huge=True), _DECODE_MISTAKES,
                    "Correct decoding.")


def check_box_coding(encode: Callable, decode: Callable) -> Feedback:
    """Check ``encode(boxes (N, 4), anchors (N, 4), weights) -> deltas (N, 4)`` and its inverse
    ``decode(deltas, anchors, weights) -> boxes`` (with the clamp of t_w, t_h at log(1000/16)).

    Compared with :class:`fl_lab.boxes.BoxCoder` (equal to torchvision's) with RetinaNet's unit
    weights and Faster R-CNN's (10, 10, 5, 5); encode is checked first.
    """
    for fn, exercise in ((encode, _ENCODE), (decode, _DECODE)):
        feedback = _check(fn, exercise)
        if not feedback.passed:
            return Feedback(False, f"{exercise.name}: {feedback.message}")
    return Feedback(True, "Correct: centre offsets in anchor units and log size ratios, weighted, and back — "
                          "decode(encode(box)) is the box, and a wild prediction stays a finite box.")


# ------------------------------------------------------------------ NMS
def _run_nms(fn: Callable, args: tuple) -> Tensor:
    """The kept indices, sorted: any order of the output is accepted."""
    out = fn(*args)
    if not isinstance(out, Tensor):
        raise _Invalid(f"Return the indices of the kept boxes as a tensor; yours returned {_returned(out)}")
    if out.dtype == torch.bool:
        raise _Invalid("Return the *indices* of the kept boxes (int64), not a mask: `torch.nonzero(mask)[:, 0]` "
                       "turns one into the other")
    if out.dim() != 1 or out.is_floating_point():
        raise _Invalid(f"Return a 1-d tensor of int64 indices; yours is {out.dtype} of shape {tuple(out.shape)}")
    return out.long().sort().values


def _reference_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    return batched_nms(boxes, scores, labels, iou_threshold)


def _greedy(boxes: Tensor, scores: Tensor, labels: Tensor, thr: float, per_class: bool = True,
            at_threshold: bool = False, lowest_first: bool = False, greedy: bool = True) -> Tensor:
    """A plain-Python NMS with one piece changed (the known mistakes)."""
    order = scores.argsort(descending=not lowest_first).tolist()
    iou = box_iou(boxes, boxes)
    kept, suppressed = [], set()
    for i in order:
        if i in suppressed:
            continue
        kept.append(i)
        for j in order:
            same = labels[i] == labels[j] or not per_class
            if j != i and same and (iou[i, j] >= thr if at_threshold else iou[i, j] > thr):
                suppressed.add(j)
    if not greedy:  # suppress by every higher-scoring overlapping box, kept or not
        kept = [i for i in order if not any(
            scores[j] > scores[i] and (labels[i] == labels[j]) and iou[i, j] > thr for j in order)]
    return torch.tensor(kept, dtype=torch.long)


_NMS_MISTAKES = (
    (_like(lambda b, s, c, t: nms(b, s, t)),
     "NMS runs per class: a box only suppresses boxes of its *own* class (torchvision's batched_nms). Yours lets "
     "a cat suppress an overlapping dog."),
    (_like(lambda b, s, c, t: _greedy(b, s, c, t, at_threshold=True)),
     "A box is suppressed when its IoU with a kept box is *greater than* the threshold; at exactly the threshold "
     "it stays (torchvision's rule). Use `>`, not `>=`."),
    (_like(lambda b, s, c, t: _greedy(b, s, c, t, lowest_first=True)),
     "Visit the boxes from the *highest* score down: the best box of a cluster is the one kept."),
    (_like(lambda b, s, c, t: _greedy(b, s, c, t, greedy=False)),
     "NMS is greedy: only boxes that are *kept* suppress others. A box suppressed by a better one must not "
     "suppress a third box in turn."),
)


def _nms_cases() -> tuple[_Case, ...]:
    g = torch.Generator().manual_seed(12)
    xy = torch.rand(30, 2, generator=g) * 60
    wh = 10 + torch.rand(30, 2, generator=g) * 30
    random = (torch.cat((xy, xy + wh), dim=1), torch.rand(30, generator=g), torch.randint(0, 3, (30,), generator=g))
    # IoU exactly 0.5: [0, 0, 2, 1] and [0, 0, 1, 1] share 1 of 2.
    exact = (torch.tensor([[0.0, 0, 2, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8]), torch.tensor([0, 0]))
    # A chain: A overlaps B, B overlaps C, A and C do not; greedy NMS keeps A and C.
    chain = (torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [9, 0, 19, 10]]), torch.tensor([0.9, 0.8, 0.7]),
             torch.tensor([1, 1, 1]))
    # Two classes on one spot.
    classes = (torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]]), torch.tensor([0.9, 0.8, 0.7]),
               torch.tensor([0, 1, 0]))
    return (_Case("30 random boxes of 3 classes, IoU threshold 0.5", (*random, 0.5)),
            _Case("two boxes with IoU exactly 0.5, threshold 0.5", (*exact, 0.5)),
            _Case("a chain of three overlapping boxes", (*chain, 0.3)),
            _Case("boxes of two classes on one spot", (*classes, 0.5)),
            _Case("no boxes", (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)))


def check_nms(learner_fn: Callable) -> Feedback:
    """Check ``nms(boxes (N, 4), scores (N,), labels (N,), iou_threshold) -> kept indices (M,) int64``.

    Greedy, per class, a box suppressed when its IoU with a kept box of its class is greater than
    the threshold: compared with torchvision's ``batched_nms`` (any order of the kept indices).
    """
    return _check(learner_fn, _Exercise(
        "nms", _reference_nms, _run_nms, _nms_cases(), _NMS_MISTAKES,
        "Correct: per class, from the best box down, each kept box suppresses the boxes that overlap it by more "
        "than the threshold — what RetinaNet.detect does after decoding (§4.1 Inference).",
    ))
