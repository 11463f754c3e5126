"""Lesson 6: online hard example mining's selection."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..ohem import ohem_mask
from .checking import Feedback, _Case, _check, _Exercise, _fresh, _like, _tensor

__all__ = ["check_ohem_select"]


def _reference_ohem(losses: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """fl_lab's OHEM without its NMS: far-apart dummy boxes and threshold 1 suppress nothing."""
    num_images, num_anchors = losses.shape
    x = 10.0 * torch.arange(num_anchors, dtype=losses.dtype)
    boxes = torch.stack((x, torch.zeros_like(x), x + 1, torch.ones_like(x)), dim=1).expand(num_images, -1, -1)
    return ohem_mask(losses, boxes, labels, batch_size, nms_thresh=1.0)


def _run_ohem(fn: Callable, args: tuple) -> tuple:
    """Per image: the selected anchors' losses (descending) and how many ignored ones were taken.

    Comparing these rather than the mask accepts any choice among tied losses.
    """
    losses, labels, _ = args
    mask = _tensor(fn(*_fresh(args)), tuple(losses.shape), "the selection mask", kind="bool")
    valid = labels != -2
    return tuple(
        (losses[i][mask[i] & valid[i]].sort(descending=True).values, (mask[i] & ~valid[i]).sum())
        for i in range(losses.shape[0])
    )


def _top_per_image(
    losses: Tensor,
    labels: Tensor,
    batch_size: int,
    largest: bool = True,
    skip_ignored: bool = True,
    pad_with_ignored: bool = False,
) -> Tensor:
    """Per image, ``batch_size`` anchors ranked by loss; the flags make the known mistakes."""
    valid = labels != -2 if skip_ignored else torch.ones_like(labels, dtype=torch.bool)
    ranked = losses.masked_fill(~valid, -math.inf if largest else math.inf)
    top = ranked.topk(min(batch_size, losses.shape[1]), dim=1, largest=largest).indices
    mask = torch.zeros_like(valid).scatter(1, top, True)
    return mask if pad_with_ignored else mask & valid


def _top_of_batch(losses: Tensor, labels: Tensor, batch_size: int, per_image_budget: bool) -> Tensor:
    """The hardest non-ignored anchors of the whole batch (batch_size, or batch_size per image, in all)."""
    k = batch_size * losses.shape[0] if per_image_budget else batch_size
    valid = (labels != -2).flatten()
    top = losses.flatten().masked_fill(~valid, -math.inf).topk(min(k, losses.numel())).indices
    return (torch.zeros_like(valid).scatter(0, top, True) & valid).view_as(labels)


_ACROSS_BATCH = ("Pick the hardest anchors of each image separately — `batch_size` per image — not the hardest "
                 "of the whole batch: an image with large losses would otherwise take every place (§5.1, Table 1d).")
_OHEM_MISTAKES = (
    (_like(lambda loss, y, b: _top_per_image(loss, y, b, largest=False)),
     "You selected the lowest losses; OHEM keeps the *highest*-loss anchors — the hard examples."),
    (_like(lambda loss, y, b: _top_of_batch(loss, y, b, per_image_budget=True)), _ACROSS_BATCH),
    (_like(lambda loss, y, b: _top_of_batch(loss, y, b, per_image_budget=False)), _ACROSS_BATCH),
    (_like(lambda loss, y, b: _top_per_image(loss, y, b, skip_ignored=False)),
     "Ignored anchors (label −2) must never be selected: they are not part of the loss."),
    (_like(lambda loss, y, b: _top_per_image(loss, y, b, pad_with_ignored=True)),
     "When an image has fewer than `batch_size` non-ignored anchors, select just those: yours fills up with "
     "ignored ones (`topk` after `masked_fill(-inf)` still returns the −inf entries — drop them with `& valid`)."),
)


def check_ohem_select(learner_fn: Callable) -> Feedback:
    """Check ``ohem_select(losses, labels, batch_size) -> (B, A)`` bool.

    Per image, the ``batch_size`` highest-loss anchors whose label is not -2 (all of them
    when there are fewer); no NMS. Compared with :func:`fl_lab.ohem.ohem_mask` at NMS
    threshold 1; any choice among tied losses is accepted.
    """
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(-2, 2, (3, 30), generator=g)
    losses = torch.rand(3, 30, generator=g) * torch.tensor([[1.0], [10.0], [0.1]])  # images on different scales
    few = torch.tensor([[-2, 0, -2, -1, -2, -2, -1, -2], [-1, -1, 1, -1, -2, -1, -1, -1]])
    cases = (
        _Case("3 images, batch_size 5", (losses, labels, 5)),
        _Case("an image with every anchor ignored",
              (losses[:2, :12], torch.cat((labels[:1, :12], torch.full((1, 12), -2))), 4)),
        _Case("an image with fewer non-ignored anchors than batch_size",
              (torch.rand(2, 8, generator=g) + 2 * (few == -2), few, 4)),
        # Ties at the cut among non-ignored anchors only: which of them is taken doesn't matter.
        _Case("tied losses", (torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 0.5], [1.0, 1.0, 1.0, 1.0, 0.0, 4.0]]),
                              torch.tensor([[-1, -2, -1, 0, -1, -1], [-1, 0, -1, -1, -2, -1]]), 2)),
        _Case("batch_size larger than the number of anchors", (losses[:, :6], labels[:, :6], 10)),
    )
    return _check(learner_fn, _Exercise(
        "ohem_select", _reference_ohem, _run_ohem, cases, _OHEM_MISTAKES,
        "Correct: per image, the hardest non-ignored anchors — the minibatch OHEM trains on (without its NMS).",
    ))
