"""Lesson 5: the loss CDF of Figure 4."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..analysis import cumulative_loss
from .checking import Feedback, _Case, _check, _Exercise, _like, _tensor

__all__ = ["check_loss_cdf"]


def _run_cdf(fn: Callable, args: tuple) -> Tensor:
    return _tensor(fn(*args), tuple(args[0].shape), "the cumulative shares (one per sample)").detach()


_CDF_MISTAKES = (
    (_like(lambda losses: torch.sort(losses / losses.sum(), descending=True).values.cumsum(0)),
     "Sort from the lowest loss to the highest (ascending): the easy majority comes first, the hardest samples "
     "last, and the curve's rise at the right end shows how much of the loss they hold (Figure 4)."),
    (_like(lambda losses: torch.sort(losses).values.cumsum(0)),
     "Divide by the total loss, so that the curve ends at 1: each value is then the share of the loss held "
     "by the samples up to that one."),
    (_like(lambda losses: torch.sort(losses).values.cumsum(0) / len(losses)),
     "Divide by the total loss (`losses.sum()`), not by the number of samples: the curve must end at 1."),
    (_like(lambda losses: (losses / losses.sum()).cumsum(0)),
     "Sort the losses (ascending) before the cumulative sum."),
    (_like(lambda losses: torch.sort(losses / losses.sum()).values),
     "Take the cumulative sum (`.cumsum(0)`) of the sorted, normalised losses."),
)


def check_loss_cdf(learner_fn: Callable) -> Feedback:
    """Check ``loss_cdf(losses) -> (n,)``: losses normalised to sum 1, sorted ascending, cumulated.

    losses: (n,) float ≥ 0 with a positive sum. Compared with
    :func:`fl_lab.analysis.cumulative_loss`.
    """
    g = torch.Generator().manual_seed(5)
    heavy = torch.cat((1e-4 * torch.rand(95, generator=g), 5 + torch.rand(5, generator=g)))
    cases = (
        _Case("200 random losses", (torch.rand(200, generator=g) ** 3,)),
        _Case("a few hard samples among many easy ones", (heavy[torch.randperm(100, generator=g)],)),
        _Case("ties", (torch.tensor([2.0, 1.0, 1.0, 2.0, 1.0]),)),
        _Case("one sample", (torch.tensor([0.7]),)),
    )
    return _check(learner_fn, _Exercise(
        "loss_cdf", cumulative_loss, _run_cdf, cases, _CDF_MISTAKES,
        "Correct: the curve of Figure 4 — it rises slowly through the easy samples and ends at 1.",
    ))
