"""Worked solutions of the lessons' exercises, written the way a learner would.

Each function implements the contract its check in :mod:`fl_lab.exercises` describes,
from the formula alone (no fl_lab internals), so the checks prove these against the kit.
In fast mode (CI) the notebooks check these instead of the learner's empty stubs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "anchors_at",
    "decode",
    "encode",
    "focal_loss",
    "loss_cdf",
    "match",
    "nms",
    "normalised_loss",
    "ohem_select",
    "p_t_alpha_t",
    "prior_bias",
    "sample_counts",
]


# Lesson 1 ---------------------------------------------------------------------------
def p_t_alpha_t(logits: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """p_t = p if y = 1 else 1 - p, α_t = α if y = 1 else 1 - α (§3). All shapes (N, K)."""
    p = torch.sigmoid(logits)
    positive = targets == 1
    return torch.where(positive, p, 1 - p), torch.where(positive, alpha, 1 - alpha)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float, alpha: float) -> Tensor:
    """Σ -α_t (1 - p_t)^γ log p_t over all (N, K) entries, as a 0-d tensor.

    log p_t comes from log-sigmoids, never from a probability: σ(x) rounds to 0 or 1 for
    large |x|, and log 0 = -inf.
    """
    positive = targets == 1
    log_p_t = torch.where(positive, F.logsigmoid(logits), F.logsigmoid(-logits))
    alpha_t = torch.where(positive, alpha, 1 - alpha)
    return (-alpha_t * (1 - log_p_t.exp()) ** gamma * log_p_t).sum()


# Lesson 2 ---------------------------------------------------------------------------
def anchors_at(x: int, y: int, stride: int, size: float) -> Tensor:
    """The 9 anchors (9, 4) x1 y1 x2 y2 of cell (column x, row y): ratio-major, scale-minor."""
    cx, cy = x * stride, y * stride  # the kit centres anchors on the cell's top-left corner
    boxes = []
    for ratio in (0.5, 1.0, 2.0):  # height / width: 0.5 is a wide box
        for scale in (2**0, 2 ** (1 / 3), 2 ** (2 / 3)):
            side = size * scale
            w, h = side / math.sqrt(ratio), side * math.sqrt(ratio)
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(boxes)


def match(iou: Tensor) -> Tensor:
    """Per anchor: its best box's index if IoU ≥ 0.5, -1 if < 0.4, else -2. iou (G ≥ 1, A) -> (A,)."""
    best_iou, best_box = iou.max(dim=0)  # ties go to the first box
    matches = torch.where(best_iou >= 0.5, best_box, -2)
    return torch.where(best_iou < 0.4, -1, matches)


# Lesson 3 ---------------------------------------------------------------------------
def prior_bias(pi: float) -> float:
    """The class-output bias b with σ(b) = π: b = -log((1 - π) / π)."""
    return -math.log((1 - pi) / pi)


def encode(boxes: Tensor, anchors: Tensor, weights: tuple) -> Tensor:
    """(t_x, t_y, t_w, t_h) of each box (N, 4) against its anchor (N, 4), Faster R-CNN's parametrisation."""
    wx, wy, ww, wh = weights
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    return torch.stack([wx * (x - ax) / aw, wy * (y - ay) / ah, ww * torch.log(w / aw), wh * torch.log(h / ah)], 1)


def decode(deltas: Tensor, anchors: Tensor, weights: tuple) -> Tensor:
    """The boxes (N, 4) x1 y1 x2 y2 that ``deltas`` (N, 4) describe; t_w, t_h clamped at log(1000 / 16)."""
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    x, y = ax + deltas[:, 0] / wx * aw, ay + deltas[:, 1] / wy * ah
    w = torch.exp((deltas[:, 2] / ww).clamp(max=math.log(1000 / 16))) * aw
    h = torch.exp((deltas[:, 3] / wh).clamp(max=math.log(1000 / 16))) * ah
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1)


def nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Greedy per-class NMS: the indices of the kept boxes, best first."""
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in scores.argsort(descending=True).tolist():
        x1 = torch.maximum(boxes[i, 0], boxes[keep, 0])
        y1 = torch.maximum(boxes[i, 1], boxes[keep, 1])
        x2 = torch.minimum(boxes[i, 2], boxes[keep, 2])
        y2 = torch.minimum(boxes[i, 3], boxes[keep, 3])
        inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
        iou = inter / (areas[i] + areas[keep] - inter)
        if not bool(((iou > iou_threshold) & (labels[keep] == labels[i])).any()):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.long)


# Lesson 4 ---------------------------------------------------------------------------
def normalised_loss(cls_loss_sum: Tensor, box_loss_sum: Tensor, labels: Tensor) -> Tensor:
    """(cls + box) / max(1, number of foreground anchors); labels (B, A), foreground = label ≥ 0."""
    num_foreground = (labels >= 0).sum()
    return (cls_loss_sum + box_loss_sum) / num_foreground.clamp(min=1)


# Lesson 5 ---------------------------------------------------------------------------
def loss_cdf(losses: Tensor) -> Tensor:
    """Losses (n,) normalised to sum to 1, sorted ascending, cumulated: (n,), ending at 1."""
    return torch.sort(losses / losses.sum()).values.cumsum(0)


# Lesson 6 ---------------------------------------------------------------------------
def ohem_select(losses: Tensor, labels: Tensor, batch_size: int) -> Tensor:
    """Per image, the ``batch_size`` highest-loss anchors whose label is not -2: bool (B, A)."""
    valid = labels != -2
    ranked = losses.masked_fill(~valid, -math.inf)  # ignored anchors rank last
    top = ranked.topk(min(batch_size, losses.shape[1]), dim=1).indices
    mask = torch.zeros_like(valid).scatter(1, top, True)
    return mask & valid  # an image with few valid anchors must not fill up with ignored ones


def sample_counts(num_pos: int, num_neg: int, batch_size: int, positive_fraction: float) -> tuple[int, int]:
    """How many positives and negatives a two-stage detector samples for one image's minibatch."""
    n_pos = min(num_pos, int(batch_size * positive_fraction))  # a fixed share, if there are that many
    n_neg = min(num_neg, batch_size - n_pos)  # the rest are negatives
    return n_pos, n_neg
