"""Where the loss goes: splitting a batch's total loss between kinds of examples (lesson 01).

The paper's argument (§1, §3) is about *shares*: a dense detector scores ~100k anchors
per image, almost all of them easy negatives, and under cross-entropy their many small
losses add up to most of the total. This module builds such a batch and measures it, and
counts anchor assignments per pyramid level (lesson 02).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..loss import BACKGROUND, IGNORE, focal_loss

__all__ = ["ASSIGNMENT_KINDS", "GROUPS", "PRIOR_LOGIT", "GroupLoss", "LossSetting", "compare_losses",
           "count_assignments", "format_shares", "loss_shares", "simulate_anchor_batch"]

GROUPS = ("positives", "hard negatives", "easy negatives")
"""The three kinds of example; 'easy' means well classified, p_t > easy_pt (0.5 in the paper's Figure 1)."""

PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)
"""Logit of the prior π = 0.01 the classifier starts from (§3.3): about -4.595."""


@dataclass(frozen=True)
class LossSetting:
    """A loss to compare: the focal loss with focusing γ and weight α (None: no weighting).

    γ = 0 with α = None is plain cross-entropy; γ = 0 alone is α-balanced CE.
    """

    gamma: float
    alpha: Optional[float]

    @property
    def label(self) -> str:
        a = "" if self.alpha is None else f"α = {self.alpha:g}"
        if self.gamma == 0:
            return "CE" if self.alpha is None else f"α-balanced CE ({a})"
        return f"FL (γ = {self.gamma:g}" + (f", {a})" if a else ")")


@dataclass(frozen=True)
class GroupLoss:
    """One group's part of a batch's loss."""

    count: int  # number of (anchor, class) examples in the group
    loss: float  # their summed loss
    share: float  # loss / total loss of the batch

    @property
    def mean(self) -> float:
        """Average loss of one example of the group (0 for an empty group)."""
        return self.loss / self.count if self.count else 0.0


def simulate_anchor_batch(
    num_anchors: int = 100_000,
    num_positives: int = 100,
    neg_logit_mean: float = PRIOR_LOGIT,
    neg_logit_std: float = 1.5,
    pos_logit_mean: float = 0.0,
    pos_logit_std: float = 1.5,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """A synthetic one-class batch of anchor scores, shaped like a detector's.

    Negative logits are drawn around the prior's logit (a classifier early in training),
    positive logits around 0 (p ≈ 0.5: not yet learned). Positives come first.

    Returns:
        logits: (num_anchors, 1) float32; target: (num_anchors,) int64, 0 for a positive
        and -1 (background) for a negative -- the index form of :func:`fl_lab.loss.focal_loss`.
    """
    if num_anchors < 1 or not 0 <= num_positives <= num_anchors:
        raise ValueError(
            f"need num_anchors >= 1 and 0 <= num_positives <= num_anchors, "
            f"got {num_anchors} and {num_positives}"
        )
    if neg_logit_std < 0 or pos_logit_std < 0:
        raise ValueError(f"logit spreads must be >= 0, got {neg_logit_std} and {pos_logit_std}")
    gen = torch.Generator().manual_seed(seed)
    num_negatives = num_anchors - num_positives
    pos = torch.randn(num_positives, generator=gen) * pos_logit_std + pos_logit_mean
    neg = torch.randn(num_negatives, generator=gen) * neg_logit_std + neg_logit_mean
    logits = torch.cat([pos, neg]).unsqueeze(1)
    target = torch.cat(
        [torch.zeros(num_positives, dtype=torch.long), torch.full((num_negatives,), BACKGROUND)]
    )
    return logits, target


def loss_shares(
    logits: Tensor, target: Tensor, setting: LossSetting, easy_pt: float = 0.5
) -> dict[str, GroupLoss]:
    """Split the loss of a batch between positives, hard negatives and easy negatives.

    Args:
        logits: (N, K); target: (N,) index form (class, -1 background, -2 ignored).
        setting: which loss (γ, α) to measure.
        easy_pt: a negative with p_t > easy_pt counts as easy (well classified).

    Returns:
        {group: GroupLoss} for each name in :data:`GROUPS`; shares sum to 1.
    """
    if not 0.0 < easy_pt < 1.0:
        raise ValueError(f"easy_pt must lie in (0, 1), got {easy_pt}")
    loss = focal_loss(logits, target, setting.gamma, setting.alpha, reduction="none")  # (N, K)
    rows = target >= 0
    positive = torch.zeros_like(loss, dtype=torch.bool)
    positive[rows, target[rows]] = True
    negative = ~positive & (target != IGNORE).unsqueeze(1)
    p_t = torch.where(positive, torch.sigmoid(logits), torch.sigmoid(-logits))
    masks = {
        "positives": positive,
        "hard negatives": negative & (p_t <= easy_pt),
        "easy negatives": negative & (p_t > easy_pt),
    }
    total = float(loss.sum())
    return {
        name: GroupLoss(
            count=int(mask.sum()),
            loss=float(loss[mask].sum()),
            share=float(loss[mask].sum()) / total if total > 0 else 0.0,
        )
        for name, mask in masks.items()
    }


def compare_losses(
    logits: Tensor, target: Tensor, settings: Sequence[LossSetting], easy_pt: float = 0.5
) -> dict[str, dict[str, GroupLoss]]:
    """:func:`loss_shares` for several losses on the same batch, keyed by each setting's label."""
    return {s.label: loss_shares(logits, target, s, easy_pt) for s in settings}


def format_shares(results: dict[str, dict[str, GroupLoss]]) -> str:
    """A fixed-width text table of :func:`compare_losses` results: how many anchors each group holds,
    then one row per loss with each group's share of the total."""
    header = f"{'loss':<28}" + "".join(f"{g:>16}" for g in GROUPS) + f"{'total loss':>13}"
    counts = next(iter(results.values()))
    lines = [header, "-" * len(header),
             f"{'anchors':<28}" + "".join(f"{counts[g].count:>16,}" for g in GROUPS)
             + f"{sum(counts[g].count for g in GROUPS):>13,}"]
    for name, groups in results.items():
        total = sum(g.loss for g in groups.values())
        lines.append(
            f"{name:<28}" + "".join(f"{groups[g].share:>16.1%}" for g in GROUPS) + f"{total:>13.1f}"
        )
    return "\n".join(lines)


ASSIGNMENT_KINDS = ("foreground", "ignored", "background")
"""The three outcomes of matching an anchor (paper §4): IoU ≥ 0.5, in [0.4, 0.5), < 0.4."""


def count_assignments(labels: Tensor, levels: Tensor, num_levels: int) -> Tensor:
    """Count foreground, ignored and background anchors per pyramid level.

    labels: (A,) or (B, A) index-form targets (class ≥ 0, -1 background, -2 ignored);
    levels: (A,) level index of each anchor (``AnchorGenerator.level_of``).
    Returns (num_levels, 3) int64, columns in :data:`ASSIGNMENT_KINDS` order, summed over B.
    """
    if labels.shape[-1] != levels.shape[0]:
        raise ValueError(f"labels have {labels.shape[-1]} anchors but levels {levels.shape[0]}")
    kind = torch.where(labels >= 0, 0, torch.where(labels == IGNORE, 1, 2))
    index = (levels.to(labels.device) * 3 + kind).reshape(-1)
    return torch.bincount(index, minlength=num_levels * 3).reshape(num_levels, 3)
