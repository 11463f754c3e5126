"""Online hard example mining (§5.1, Table 1d): the baseline the focal loss is compared with.

OHEM scores every anchor by its loss, suppresses overlapping anchors by NMS on their
predicted boxes, and trains on each image's B highest-loss anchors only (optionally at most
1 positive to 3 negatives, as in SSD). Where the focal loss down-weights the easy examples
and keeps them all, OHEM discards them.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import rank_in_group
from .loss import IGNORE, focal_loss

__all__ = ["ohem_loss", "ohem_mask"]


def _check_ohem_params(
    batch_size: int, nms_thresh: float, max_pos_fraction: Optional[float]
) -> tuple[int, float, Optional[float]]:
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        size = operator.index(batch_size)
    except TypeError:
        raise ValueError(f"batch_size must be an integer >= 1 (anchors per image), got {batch_size!r}") from None
    if size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (anchors per image), got {size}")
    try:
        thresh = float(nms_thresh)
    except (TypeError, ValueError):
        raise ValueError(f"nms_thresh must be a number in (0, 1], got {nms_thresh!r}") from None
    if not 0.0 < thresh <= 1.0:  # also rejects NaN
        raise ValueError(f"nms_thresh must be in (0, 1] (an IoU), got {thresh}")
    if max_pos_fraction is not None:
        try:
            max_pos_fraction = float(max_pos_fraction)
        except (TypeError, ValueError):
            raise ValueError(f"max_pos_fraction must be None or a number in (0, 1], got {max_pos_fraction!r}") from None
        if not 0.0 < max_pos_fraction <= 1.0:
            raise ValueError(f"max_pos_fraction must be None or in (0, 1] (0.25: SSD's 1:3), got {max_pos_fraction}")
    return size, thresh, max_pos_fraction


def _check_ohem_tensors(scores: Tensor, boxes: Tensor, labels: Tensor) -> None:
    if not isinstance(scores, Tensor) or not scores.is_floating_point() or scores.dim() != 2:
        what = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a floating-point tensor (B, A), got {what}")
    if not isinstance(boxes, Tensor) or not boxes.is_floating_point() or boxes.shape != (*scores.shape, 4):
        what = f"{boxes.dtype} {tuple(boxes.shape)}" if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a floating-point tensor (B, A, 4) = {(*scores.shape, 4)}, got {what}")
    if (not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex()
            or labels.dtype == torch.bool):
        what = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor (class index, -1 background, -2 ignore), got {what}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the scores' shape (B, A) = {tuple(scores.shape)}, "
                         f"got {tuple(labels.shape)}")


@torch.no_grad()
def ohem_mask(
    scores: Tensor,
    boxes: Tensor,
    labels: Tensor,
    batch_size: int = 128,
    nms_thresh: float = 0.5,
    max_pos_fraction: Optional[float] = None,
) -> Tensor:
    """Online hard example mining (§5.1, Table 1d): which anchors each image trains on.

    Per image: greedy, class-agnostic NMS over the non-ignored anchors in decreasing score
    order (a box is dropped when its IoU with a kept one is > ``nms_thresh``), then the
    ``batch_size`` highest-scoring survivors. With ``max_pos_fraction`` f (SSD's variant,
    f = 0.25 for 1:3): at most floor(f · batch_size) positives, highest first, and the rest
    the highest-scoring negatives.

    Greedy NMS keeps or drops a box by looking only at higher-scoring boxes, so the first
    survivors over all anchors are the first survivors of the top-M anchors: NMS runs on
    each image's top M = 8 · batch_size, doubling M for the images that have too few
    survivors (and more candidates) until done. The result is exact.

    Args:
        scores: (B, A) each anchor's loss (higher = harder); finite where not ignored.
        boxes: (B, A, 4) x1 y1 x2 y2, each anchor's predicted box.
        labels: (B, A) index form: class >= 0 (positive), -1 background (negative),
            -2 ignore (never selected).
        batch_size: anchors per image (the paper's 128 or 256).
        nms_thresh: IoU threshold of the NMS, in (0, 1] (1: no suppression).
        max_pos_fraction: None, or the largest fraction of positives, in (0, 1].

    Returns:
        (B, A) bool; at most ``batch_size`` True per image.
    """
    batch_size, nms_thresh, max_pos_fraction = _check_ohem_params(batch_size, nms_thresh, max_pos_fraction)
    _check_ohem_tensors(scores, boxes, labels)
    num_images, num_anchors = scores.shape
    device = scores.device
    mask = torch.zeros(num_images, num_anchors, dtype=torch.bool, device=device)
    if mask.numel() == 0:
        return mask
    valid = labels != IGNORE
    if not bool((torch.isfinite(scores) | ~valid).all()):
        raise ValueError("scores must be finite for every non-ignored anchor, got NaN/inf")
    # One dtype for boxes and scores (at least fp32); scores only widen, so no new ties.
    dtype = torch.promote_types(torch.promote_types(scores.dtype, boxes.dtype), torch.float32)
    ranked = scores.to(dtype).masked_fill(~valid, -math.inf)  # ignored anchors sort last
    # batched_nms may offset each image's boxes by (image index) · (largest coordinate + 1),
    # which keeps images apart only for coordinates >= 0: predicted boxes can reach
    # outside the image, so shift them (IoU is translation invariant).
    boxes = boxes.to(dtype)
    boxes = boxes - boxes.amin().clamp(max=0)
    num_valid = valid.sum(1)  # (B,)
    max_pos = None if max_pos_fraction is None else math.floor(max_pos_fraction * batch_size)

    pending = torch.arange(num_images, device=device)  # images whose minibatch is not known yet
    m = min(num_anchors, 8 * batch_size)
    while True:
        n = pending.numel()
        top = ranked[pending].topk(m, dim=1).indices  # (n, m), decreasing score
        local = torch.arange(n, device=device).unsqueeze(1).expand_as(top)
        is_cand = valid[pending.unsqueeze(1), top]
        local, anchor = local[is_cand], top[is_cand]  # (N,) candidates, image-major
        image = pending[local]
        keep = batched_nms(boxes[image, anchor], ranked[image, anchor], local, nms_thresh)
        local, anchor = local[keep], anchor[keep]  # survivors, in decreasing score order
        if max_pos is None:
            rank, counts = rank_in_group(local, n)
            chosen = rank < batch_size
            enough = counts >= batch_size
        else:
            positive = labels[pending[local], anchor] >= 0
            rank, counts = rank_in_group(2 * local + positive.long(), 2 * n)
            num_neg, num_pos = counts.view(n, 2).unbind(1)
            neg_quota = batch_size - num_pos.clamp(max=max_pos)  # negatives fill the rest
            chosen = torch.where(positive, rank < max_pos, rank < neg_quota[local])
            enough = (num_pos >= max_pos) & (num_neg >= batch_size - max_pos)
        # An image is settled once it has enough survivors, or once every candidate was seen.
        done = enough | (num_valid[pending] <= m) if m < num_anchors else torch.ones_like(enough)
        chosen &= done[local]
        mask[pending[local[chosen]], anchor[chosen]] = True
        pending = pending[~done]
        if pending.numel() == 0:
            return mask
        m = min(2 * m, num_anchors)


def ohem_loss(
    logits: Tensor,
    target: Tensor,
    reduction: str = "sum",
    *,
    boxes: Tensor,
    batch_size: int = 128,
    nms_thresh: float = 0.5,
    max_pos_fraction: Optional[float] = None,
    alpha: Optional[float] = None,
    check_values: bool = True,
) -> Tensor:
    """Cross-entropy on the hard examples picked by OHEM (§5.1, Table 1d).

    Each anchor is scored by its CE summed over the K classes (α-weighted when ``alpha`` is
    given), :func:`ohem_mask` picks each image's minibatch with NMS over the predicted
    ``boxes``, and only those anchors' entries count. The paper's best: batch 128 with
    NMS 0.5 (32.8 AP); with SSD's 1:3 (``max_pos_fraction=0.25``) 31.1, against FL's 36.0.

    Args:
        logits: (B, A, K) class logits.
        target: (B, A) integer class indices, -1 background, -2 ignore.
        reduction: "none" ((B, A, K), zero outside the minibatch), "sum" (the paper's
            choice, normalised by the caller by the number of foreground anchors) or
            "mean" (over the selected anchors × K; 0 when none).
        boxes: (B, A, 4) x1 y1 x2 y2 predicted boxes, the NMS's input (not differentiated).
        batch_size, nms_thresh, max_pos_fraction: as in :func:`ohem_mask`.
        alpha: weight α of positives (negatives 1 - α), or None (plain CE, the default).
        check_values: as in :func:`focal_loss`.

    Returns:
        The loss, a scalar or (B, A, K); gradients reach only the selected anchors' logits.
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    batch_size, nms_thresh, max_pos_fraction = _check_ohem_params(batch_size, nms_thresh, max_pos_fraction)
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"ohem_loss needs logits (B, A, K), one row of anchors per image, got {shape}")
    if isinstance(target, Tensor) and target.is_floating_point():
        raise ValueError(f"ohem_loss needs an integer (index) target (B, A), got {target.dtype}")
    loss = focal_loss(logits, target, 0.0, alpha, "none", check_values)  # (B, A, K) CE per entry
    mask = ohem_mask(loss.detach().sum(-1), boxes, target, batch_size, nms_thresh, max_pos_fraction)
    loss = loss * mask.unsqueeze(-1).to(loss.dtype)
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    return total / (mask.sum() * logits.shape[-1]).clamp(min=1)


# The interface fl_lab.detection_loss reads: this loss gets boxes= the predicted boxes (B, A, 4).
ohem_loss.needs_predicted_boxes = True
