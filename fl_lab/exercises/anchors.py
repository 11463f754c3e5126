"""Lesson 2: the anchors of one location, and the matching rule."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..anchors import AnchorGenerator
from ..matcher import Matcher
from .checking import Feedback, _Case, _check, _Exercise, _like, _tensor, _Trial

__all__ = ["check_anchors_at", "check_match"]


def _reference_anchors_at(x: int, y: int, stride: int, size: float) -> Tensor:
    """Cell (x, y) of a one-level AnchorGenerator: the kit's own anchors and order."""
    generator = AnchorGenerator(sizes=(size,), strides=(stride,))
    rows, cols = y + 1, x + 1  # the smallest image whose grid holds this cell
    anchors = generator.gen((rows * stride, cols * stride))
    first = (y * cols + x) * generator.num_anchors_per_location
    return anchors[first : first + generator.num_anchors_per_location]


def _run_anchors(fn: Callable, args: tuple) -> Tensor:
    return _tensor(fn(*args), (9, 4), "the 9 anchors (x1, y1, x2, y2 per row)")


def _from_reference(transform: Callable[[Tensor, int, int, int], Tensor]) -> Callable:
    """A known-wrong variant made by transforming the reference's anchors of cell (x, y)."""
    return lambda x, y, stride, size: transform(_reference_anchors_at(x, y, stride, size), x, y, stride)


def _centre_size(boxes: Tensor) -> Tensor:
    return torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), dim=1)


def _twice_as_big(boxes: Tensor) -> Tensor:
    centre, size = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    return torch.cat((centre - size, centre + size), dim=1)


def _same_boxes_other_order(trial: _Trial) -> bool:
    def rows(t: Tensor) -> list:
        return sorted(tuple(round(v, 3) for v in row) for row in t.tolist())

    return all(rows(trial.got[name]) == rows(trial.expected[name]) for name in trial.got)


_SCALE_MAJOR = [0, 3, 6, 1, 4, 7, 2, 5, 8]  # row r·3 + s of the kit's order, listed scale by scale
_RATIOS_REVERSED = [6, 7, 8, 3, 4, 5, 0, 1, 2]

_ANCHOR_MISTAKES = (
    (_like(_from_reference(lambda a, x, y, s: a + s / 2)),
     "Your anchors are centred half a stride off: the kit (like torchvision and detectron2) centres the anchors "
     "of cell (x, y) on (x · stride, y · stride), the cell's top-left corner, not its middle."),
    (_like(_from_reference(lambda a, x, y, s: a + torch.tensor([y - x, x - y, y - x, x - y]) * s)),
     "Your anchors sit at the mirrored cell: x is the column (it moves the box right), y the row (down). "
     "The centre is (x · stride, y · stride)."),
    (_like(_from_reference(lambda a, x, y, s: _centre_size(a))),
     "Return corners x1, y1, x2, y2 (the kit's box format), not centre and size."),
    (_like(_from_reference(lambda a, x, y, s: _twice_as_big(a))),
     "Your boxes are twice too big: a box of width w centred on cx runs from cx − w/2 to cx + w/2."),
    (_like(_from_reference(lambda a, x, y, s: a[_SCALE_MAJOR])),
     "Right boxes, but scales and aspect ratios are nested the wrong way: the kit's order is aspect-ratio-major — "
     "ratio 1:2 with scales 2^0, 2^(1/3), 2^(2/3), then 1:1, then 2:1 (row = 3 · ratio index + scale index)."),
    (_like(_from_reference(lambda a, x, y, s: a[_RATIOS_REVERSED])),
     "Your first anchors are tall and your last ones wide: width and height are swapped for the ratios. In the kit "
     "an aspect ratio r is height / width, so r = 0.5 (listed first) is a *wide* box: "
     "w = side / √r, h = side · √r."),
    (_same_boxes_other_order,
     "Right boxes, wrong order. The kit lists them aspect-ratio-major, scale-minor: ratios 0.5, 1, 2 (height / "
     "width), and within each the scales 2^0, 2^(1/3), 2^(2/3)."),
)


def check_anchors_at(learner_fn: Callable) -> Feedback:
    """Check ``anchors_at(x, y, stride, size) -> (9, 4)``: the anchors of column x, row y of one level.

    Compared with :class:`fl_lab.anchors.AnchorGenerator` (offset 0: centres at
    (x · stride, y · stride)), rows in the kit's order.
    """
    cases = (
        _Case("cell (0, 0) of P3 (stride 8, size 32)", (0, 0, 8, 32)),
        _Case("cell (3, 5) of P4 (stride 16, size 64)", (3, 5, 16, 64)),
        _Case("cell (4, 1) of P5 (stride 32, size 128)", (4, 1, 32, 128)),
        _Case("cell (2, 6) of P7 (stride 128, size 512)", (2, 6, 128, 512)),
    )
    return _check(learner_fn, _Exercise(
        "anchors_at", _reference_anchors_at, _run_anchors, cases, _ANCHOR_MISTAKES,
        "Correct: your 9 anchors equal the kit's AnchorGenerator's, in the same order, on four levels.",
    ))


def _reference_match(iou: Tensor) -> Tensor:
    return Matcher(fg_iou=0.5, bg_iou=0.4, allow_low_quality=False)(iou)


def _run_match(fn: Callable, args: tuple) -> Tensor:
    num_anchors = args[0].shape[1]
    out = fn(*args)
    hint = "one entry per anchor: the best box of each anchor is the max over dim 0 (the boxes)"
    return _tensor(out, (num_anchors,), f"the matches ({hint})", kind="int").long()


def _three_way(iou: Tensor, foreground: Callable[[Tensor], Tensor], background: Callable[[Tensor], Tensor],
               codes: tuple[int, int] = (-1, -2), first_on_ties: bool = True) -> Tensor:
    """The matcher's rule with its pieces passed in: the known-wrong variants change one of them."""
    if first_on_ties:
        best_iou, best_box = iou.max(dim=0)
    else:  # the last box of a tie: take the max over the boxes in reverse order
        best_iou, flipped = iou.flip(0).max(dim=0)
        best_box = iou.shape[0] - 1 - flipped
    matches = torch.where(foreground(best_iou), best_box, codes[1])
    return torch.where(background(best_iou), codes[0], matches)


_MATCH_MISTAKES = (
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v < 0.5)),
     "Your matcher has no ignore band: anchors whose best IoU is in [0.4, 0.5) are ignored (−2), not background. "
     "The paper leaves them out of the loss (§4)."),
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v < 0.4, codes=(-2, -1))),
     "Background and ignore are swapped: background is −1 (`fl_lab.loss.BACKGROUND`), ignore is −2 (`IGNORE`)."),
    (_like(lambda iou: _three_way(iou, lambda v: v > 0.5, lambda v: v < 0.4), on=["best IoU exactly 0.5"]),
     "An anchor whose best IoU is exactly 0.5 is foreground: the rule is IoU ≥ 0.5, not > 0.5."),
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v <= 0.4), on=["best IoU exactly 0.4"]),
     "An anchor whose best IoU is exactly 0.4 is ignored: background is IoU < 0.4, not ≤ 0.4."),
    (_like(lambda iou: _three_way(iou, lambda v: v >= 0.5, lambda v: v < 0.4, first_on_ties=False),
           on=["two boxes with the same IoU"]),
     "On a tie, match the first box (the lower index), as `iou.max(dim=0)` does; yours takes the last."),
)


def _match_cases() -> tuple[_Case, ...]:
    g = torch.Generator().manual_seed(2)
    tie = torch.tensor([[0.7, 0.45, 0.2, 0.6], [0.7, 0.45, 0.1, 0.3]])
    return (
        _Case("random IoUs, 3 boxes × 12 anchors", (torch.rand(3, 12, generator=g),)),
        _Case("one box", (torch.rand(1, 7, generator=g),)),
        _Case("no foreground (every IoU < 0.4)", (0.39 * torch.rand(2, 6, generator=g),)),
        _Case("every anchor ignored (best IoU in [0.4, 0.5))", (0.4 + 0.099 * torch.rand(2, 5, generator=g),)),
        _Case("best IoU exactly 0.5", (torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.5, 0.45]]),)),
        _Case("best IoU exactly 0.4", (torch.tensor([[0.4, 0.2, 0.3], [0.1, 0.4, 0.6]]),)),
        _Case("two boxes with the same IoU", (tie,)),
    )


def check_match(learner_fn: Callable) -> Feedback:
    """Check ``match(iou) -> (A,)`` int: per anchor its best box, -1 background or -2 ignored.

    iou: (G, A) float with G ≥ 1. Compared with :class:`fl_lab.matcher.Matcher` with
    ``allow_low_quality=False`` (the paper's strict rule).
    """
    return _check(learner_fn, _Exercise(
        "match", _reference_match, _run_match, _match_cases(), _MATCH_MISTAKES,
        "Correct: foreground at IoU ≥ 0.5, background below 0.4, ignored in between, ties to the first box — "
        "the same as fl_lab's Matcher.",
    ))
