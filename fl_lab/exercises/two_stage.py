"""Lesson 7: the two-stage detector's sampled minibatch."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from .checking import Feedback, _Case, _check, _Exercise, _Invalid, _is_integer, _like, _returned

__all__ = ["check_sample_counts"]


def _reference_sample_counts(num_pos: int, num_neg: int, batch_size: int, positive_fraction: float) -> tuple:
    """How many positives and negatives torchvision's ``BalancedPositiveNegativeSampler`` takes."""
    labels = torch.cat((torch.ones(num_pos, dtype=torch.long), torch.zeros(num_neg, dtype=torch.long)))
    pos, neg = BalancedPositiveNegativeSampler(batch_size, positive_fraction)([labels])
    return int(pos[0].sum()), int(neg[0].sum())


def _run_counts(fn: Callable, args: tuple) -> tuple[Tensor, Tensor]:
    out = fn(*args)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise _Invalid(f"Return a pair (number of positives, number of negatives); yours returned {_returned(out)}")
    counts = []
    for value in out:
        if isinstance(value, Tensor) and value.dim() == 0 and _is_integer(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"Return the two counts as whole numbers (int); yours has a {type(value).__name__}")
        counts.append(torch.tensor(value))
    return counts[0], counts[1]


def _counts(pos_share: Callable[[int, float], int], top_up: bool = True, cap_pos: bool = True,
            cap_neg: bool = True) -> Callable:
    """The counting rule with one piece changed (the known mistakes)."""

    def variant(num_pos: int, num_neg: int, batch_size: int, positive_fraction: float) -> tuple[int, int]:
        n_pos = pos_share(batch_size, positive_fraction)
        n_pos = min(num_pos, n_pos) if cap_pos else n_pos
        n_neg = batch_size - (n_pos if top_up else pos_share(batch_size, positive_fraction))
        return n_pos, min(num_neg, n_neg) if cap_neg else n_neg

    return variant


def _share(batch: int, fraction: float) -> int:
    return int(batch * fraction)


_SAMPLE_MISTAKES = (
    (_like(_counts(lambda batch, fraction: int(batch * (1 - fraction)))),
     "The ratio is inverted: at most `positive_fraction` of the minibatch (1 in 4 for 0.25) may be positives; "
     "the rest are negatives — the paper's fixed 1:3 foreground : background (§1)."),
    (_like(_counts(_share, cap_pos=False)),
     "You cannot sample more positives than there are: take min(num_pos, batch_size × positive_fraction)."),
    (_like(_counts(_share, top_up=False)),
     "When there are too few positives, the minibatch is filled up with negatives: negatives get "
     "batch_size − (the positives actually taken), not a fixed batch_size × (1 − positive_fraction)."),
    (_like(_counts(_share, cap_neg=False)),
     "You cannot sample more negatives than there are: cap them at num_neg."),
    (_like(_counts(lambda batch, fraction: math.ceil(batch * fraction))),
     "You round the positives' share up; torchvision takes int(batch_size × positive_fraction), rounding down, "
     "so the positives never exceed their fraction."),
    (_like(_counts(lambda batch, fraction: round(batch * fraction))),
     "You round the positives' share to the nearest whole number; torchvision takes int(batch_size × "
     "positive_fraction), rounding down, so the positives never exceed their fraction."),
)


def check_sample_counts(learner_fn: Callable) -> Feedback:
    """Check ``sample_counts(num_pos, num_neg, batch_size, positive_fraction) -> (n_pos, n_neg)``.

    The two-stage detector's minibatch rule (Faster R-CNN: 512 RoIs, at most 25 % positives):
    compared with torchvision's ``BalancedPositiveNegativeSampler``.
    """
    cases = (
        _Case("plenty of both (1000 positives, 5000 negatives, 512 at 0.25)", (1000, 5000, 512, 0.25)),
        _Case("few positives (20)", (20, 5000, 512, 0.25)),
        _Case("few negatives (100)", (1000, 100, 512, 0.25)),
        _Case("no positives", (0, 300, 512, 0.25)),
        _Case("the RPN's rule (256 at 0.5)", (100, 1000, 256, 0.5)),
        _Case("a share that is not whole (134 at 0.25: 33.5 positives)", (100, 1000, 134, 0.25)),
        _Case("another share that is not whole (130 at 0.25: 32.5 positives)", (100, 1000, 130, 0.25)),
    )
    return _check(learner_fn, _Exercise(
        "sample_counts", _reference_sample_counts, _run_counts, cases, _SAMPLE_MISTAKES,
        "Correct: a fixed share of positives, topped up with negatives — the sampling heuristic that the focal "
        "loss replaces by letting every anchor count.",
    ))
