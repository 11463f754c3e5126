"""Lesson 4: normalising the loss."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .checking import (
    _CUT_FROM_GRAPH,
    Feedback,
    _Case,
    _check,
    _Exercise,
    _like,
    _loss_and_gradients,
    _LossAndGradients,
    _values_right_gradients_wrong,
    _wrong_only_on,
)

__all__ = ["check_normalised_loss"]


def _reference_normalised(cls_loss_sum: Tensor, box_loss_sum: Tensor, labels: Tensor) -> Tensor:
    """As RetinaNet.loss with normalize="batch": both sums ÷ the batch's foreground count, at least 1."""
    normaliser = (labels >= 0).sum().float().clamp(min=1)
    return cls_loss_sum / normaliser + box_loss_sum / normaliser


def _run_normalised(fn: Callable, args: tuple) -> _LossAndGradients:
    """The loss and its gradients with respect to the two sums."""
    return _loss_and_gradients(fn(*args), args[:2], "normalised loss")


def _divided_by(count: Callable[[Tensor], Tensor], box_too: bool = True) -> Callable:
    def variant(cls_loss_sum: Tensor, box_loss_sum: Tensor, labels: Tensor) -> Tensor:
        n = count(labels).float().clamp(min=1)
        return cls_loss_sum / n + (box_loss_sum / n if box_too else box_loss_sum)

    return variant


_NORMALISE_MISTAKES = (
    (_like(_divided_by(lambda labels: torch.tensor(labels.numel()))),
     "You divide by all anchors; divide by the number of *foreground* anchors (label ≥ 0). Over ~100k anchors "
     "the easy negatives would otherwise shrink the loss to almost nothing (§4)."),
    (_like(_divided_by(lambda labels: (labels != -2).sum())),
     "You count background anchors too; divide by the number of *foreground* anchors only (label ≥ 0)."),
    (_like(_divided_by(lambda labels: (labels != -1).sum())),
     "You count ignored anchors (label −2) as foreground; foreground is label ≥ 0."),
    (_like(_divided_by(lambda labels: (labels > 0).sum())),
     "Class 0 is an object too: foreground is label ≥ 0, not > 0 (−1 is background, −2 ignored)."),
    (_like(_divided_by(lambda labels: (labels >= 0).sum(), box_too=False)),
     "Divide the box loss by the foreground count as well, not only the classification loss."),
    (_values_right_gradients_wrong, _CUT_FROM_GRAPH),
    (_wrong_only_on("no foreground anchors", finite=False),
     "A batch without any foreground anchor makes you divide by 0: use max(1, count) — the sums are then "
     "the background's loss alone, and 0 for the boxes."),
)


def check_normalised_loss(learner_fn: Callable) -> Feedback:
    """Check ``normalised_loss(cls_loss_sum, box_loss_sum, labels) -> 0-d tensor``.

    (cls_loss_sum + box_loss_sum) / max(1, number of anchors with label ≥ 0), labels (B, A)
    in the index form (class, -1 background, -2 ignored): as ``RetinaNet.loss``.
    """
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(-2, 3, (2, 40), generator=g)  # classes 0–2, background, ignored

    def sums(cls: float, box: float) -> tuple[Tensor, Tensor]:
        return torch.tensor(cls, requires_grad=True), torch.tensor(box, requires_grad=True)

    cases = (
        _Case("a batch of 2 images", (*sums(37.5, 12.25), labels)),
        _Case("one foreground anchor, of class 0", (*sums(4.5, 0.75), torch.tensor([[-1, 0, -2, -1]]))),
        _Case("no foreground anchors", (*sums(3.0, 0.0), torch.tensor([[-1, -2, -1], [-1, -1, -2]]))),
    )
    return _check(learner_fn, _Exercise(
        "normalised_loss", _reference_normalised, _run_normalised, cases, _NORMALISE_MISTAKES,
        "Correct: both sums divided by the batch's foreground count, and by 1 when it has none — "
        "as RetinaNet.loss does.",
    ))
