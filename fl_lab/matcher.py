"""Matching anchors to objects, and the training targets that follow (paper §4, "Anchors").

An anchor whose best IoU with a ground-truth box is ≥ 0.5 is foreground for that box's
class; below 0.4 it is background; in between it is ignored. Like torchvision and
detectron2, fl_lab by default also keeps each box's best anchor(s) as foreground even
below 0.5 ("low-quality matches"), so that no object goes without a positive anchor;
``allow_low_quality=False`` gives the paper's strict rule.

Everything works on padded batches — ground truth (B, G_max, 4) plus a validity mask
(B, G_max) — with no Python loop over images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from .boxes import BoxCoder, box_iou_broadcast, check_boxes
from .loss import BACKGROUND, IGNORE

__all__ = ["AssignedTargets", "Matcher", "assign_targets", "pad_targets"]


class Matcher:
    """The three-way IoU rule. ``matcher(iou)`` -> matched ground-truth index per anchor.

    Returns int64 with the matched box index, :data:`~fl_lab.loss.BACKGROUND` (-1) for
    IoU < bg_iou, :data:`~fl_lab.loss.IGNORE` (-2) for bg_iou ≤ IoU < fg_iou. Identical to
    ``torchvision.models.detection._utils.Matcher(fg_iou, bg_iou, allow_low_quality)`` on
    every input (ties go to the first box, as ``max`` picks it), except that an image
    with no boxes gives all background instead of an error.
    """

    def __init__(self, fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality: bool = True):
        if not 0.0 <= bg_iou <= fg_iou <= 1.0:
            raise ValueError(f"need 0 <= bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
        self.fg_iou = float(fg_iou)
        self.bg_iou = float(bg_iou)
        self.allow_low_quality = allow_low_quality

    def __call__(self, iou: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """iou: (G, A) or padded (B, G, A); valid: (B, G) bool mask of real boxes.

        Returns (A,) or (B, A) int64.
        """
        if not isinstance(iou, Tensor) or iou.dim() not in (2, 3) or not iou.is_floating_point():
            raise ValueError(f"iou must be a float tensor (G, A) or (B, G, A), got {getattr(iou, 'shape', iou)}")
        single = iou.dim() == 2
        if single:
            iou = iou.unsqueeze(0)
        batch, num_gt, num_anchors = iou.shape
        if valid is None:
            valid = torch.ones(batch, num_gt, dtype=torch.bool, device=iou.device)
        elif not isinstance(valid, Tensor) or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor (which boxes are real), got "
                             f"{getattr(valid, 'dtype', type(valid).__name__)}")
        elif single:
            valid = valid.unsqueeze(0)
        if valid.shape != (batch, num_gt):
            raise ValueError(f"valid must have shape {(batch, num_gt)}, got {tuple(valid.shape)}")
        if iou.numel() and bool(torch.isnan(iou).any()):
            raise ValueError("iou contains NaN: check the boxes for NaN coordinates")
        if iou.numel() and not (0.0 <= float(iou.min()) and float(iou.max()) <= 1.0):
            raise ValueError(f"iou must lie in [0, 1], got values from {float(iou.min()):g} to {float(iou.max()):g}")

        if num_gt == 0:
            matches = torch.full((batch, num_anchors), BACKGROUND, dtype=torch.long, device=iou.device)
            return matches[0] if single else matches
        # Padded boxes get IoU -1: below every real IoU, so they never win the max below.
        iou = iou.masked_fill(~valid.unsqueeze(2), -1.0)
        best_iou, best_box = iou.max(dim=1)  # (B, A): best box for each anchor (first on ties)
        best_anchor = None
        if self.allow_low_quality:
            best_per_gt = iou.amax(dim=2, keepdim=True)  # (B, G, 1)
            best_anchor = ((iou == best_per_gt) & valid.unsqueeze(2)).any(dim=1)
        foreground, unmatched = self.rule(best_iou, best_anchor)
        matches = torch.where(foreground, best_box, unmatched)
        return matches[0] if single else matches

    def rule(self, best_iou: Tensor, best_anchor: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """The three-way rule on each anchor's best IoU (any shape; -1 where there is no box).

        best_anchor: bool, same shape — anchors that are some box's best anchor (all ties);
        with ``allow_low_quality`` they are foreground, for the box *they* match best.
        Returns ``foreground`` (bool) and ``unmatched`` (int64: BACKGROUND below bg_iou,
        IGNORE otherwise; meaningful where not foreground).
        """
        foreground = best_iou >= self.fg_iou
        if self.allow_low_quality and best_anchor is not None:
            foreground = foreground | best_anchor
        unmatched = torch.where(best_iou < self.bg_iou, BACKGROUND, IGNORE)
        return foreground, unmatched


@dataclass
class AssignedTargets:
    """Training targets for a batch, in the anchor order of the generator.

    labels: (B, A) int64 — class index (foreground), -1 background, -2 ignored: the index
        form of :func:`fl_lab.loss.focal_loss`.
    matches: (B, A) int64 — index of the matched box (padded batch), or -1 / -2.
    box_targets: (B, A, 4) — encoded regression targets of foreground anchors, 0 elsewhere.
    """

    labels: Tensor
    matches: Tensor
    box_targets: Tensor

    @property
    def foreground(self) -> Tensor:
        """(B, A) bool: anchors assigned to an object."""
        return self.labels >= 0

    @property
    def num_foreground(self) -> int:
        """The paper's loss normaliser: anchors assigned to a ground-truth box (§4.1)."""
        return int(self.foreground.sum())


def pad_targets(boxes: Sequence[Tensor], labels: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack per-image boxes (G_i, 4) and labels (G_i,) into a padded batch.

    Returns boxes (B, G_max, 4), labels (B, G_max) int64 (-1 in padding) and valid
    (B, G_max) bool.
    """
    if len(boxes) != len(labels) or not boxes:
        raise ValueError("need one label tensor per box tensor (at least one image), "
                         f"got {len(boxes)} and {len(labels)}")
    for i, (b, c) in enumerate(zip(boxes, labels, strict=True)):  # shape checks only, to name the image
        if b.dim() != 2 or b.shape[1] != 4 or c.shape != b.shape[:1]:
            raise ValueError(f"image {i}: boxes must be (G, 4) and labels (G,), "
                             f"got {tuple(b.shape)} and {tuple(c.shape)}")
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:  # .long() would truncate 1.7 to 1
            raise ValueError(f"image {i}: labels must be an integer tensor (class indices), got {c.dtype}")
    counts = torch.tensor([len(b) for b in boxes], device=boxes[0].device)
    out_boxes = pad_sequence(list(boxes), batch_first=True)  # (B, G_max, 4), zero padding
    out_labels = pad_sequence([c.long() for c in labels], batch_first=True, padding_value=-1)
    valid = torch.arange(out_boxes.shape[1], device=counts.device) < counts[:, None]
    check_boxes(out_boxes, "boxes", valid)
    return out_boxes, out_labels, valid


def assign_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Optional[Tensor] = None,
    matcher: Optional[Matcher] = None,
    box_coder: Optional[BoxCoder] = None,
    num_classes: Optional[int] = None,
) -> AssignedTargets:
    """Classification and box targets for every anchor of a padded batch.

    Args:
        anchors: (A, 4) from :class:`fl_lab.anchors.AnchorGenerator`.
        gt_boxes: (B, G, 4) x1 y1 x2 y2; gt_labels: (B, G) class indices ≥ 0;
        gt_valid: (B, G) bool, False for padding (default: all real). See :func:`pad_targets`.
        matcher, box_coder: default ``Matcher()`` (0.5 / 0.4, low-quality matches on) and
            ``BoxCoder()``.
        num_classes: if given, labels must be < num_classes.

    A box that overlaps no anchor at all — zero width or height, or lying wholly outside
    the anchors' reach — cannot be matched and is left out (it would otherwise make every
    anchor a "low-quality" match). Boxes reaching partly outside the image are fine.

    The matches equal ``matcher(box_iou_batched(gt_boxes, anchors), usable)`` (usable: the
    real boxes that overlap an anchor), but the (B, G, A) IoU matrix is never made: see
    :func:`_best_ious`.
    """
    matcher = matcher or Matcher()
    box_coder = box_coder or BoxCoder()
    if anchors.dim() != 2 or anchors.shape[1] != 4:
        raise ValueError(f"anchors must be (A, 4), got {tuple(anchors.shape)}")
    if gt_boxes.dim() != 3 or gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(
            f"need gt_boxes (B, G, 4) and gt_labels (B, G), got {tuple(gt_boxes.shape)} and {tuple(gt_labels.shape)}"
        )
    if gt_valid is None:
        gt_valid = torch.ones(gt_labels.shape, dtype=torch.bool, device=gt_labels.device)
    check_boxes(gt_boxes, "gt_boxes", gt_valid)
    if gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels must be an integer tensor, got {gt_labels.dtype}")
    real = gt_labels[gt_valid]
    if real.numel() and (int(real.min()) < 0 or (num_classes is not None and int(real.max()) >= num_classes)):
        bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
        limit = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise ValueError(f"gt_labels holds class {bad}; classes must be {limit}")

    batch, num_anchors = gt_boxes.shape[0], anchors.shape[0]
    image, slot = torch.nonzero(gt_valid, as_tuple=True)  # the real boxes, (N,) each
    per_anchor, per_box, pair_box, pair_anchor = _best_ious(gt_boxes[image, slot], image, batch, anchors)
    usable = torch.zeros_like(gt_valid)
    usable[image, slot] = per_box > 0
    # An image whose boxes all miss every anchor has no box to match, like an image without boxes.
    per_anchor = torch.where(usable.any(dim=1, keepdim=True), per_anchor, -1.0)
    best_anchor = torch.zeros(batch, num_anchors, dtype=torch.bool, device=anchors.device)
    best_anchor[image[pair_box], pair_anchor] = True
    foreground, matches = matcher.rule(per_anchor, best_anchor)

    # The matched box of a foreground anchor: its best usable box, the first on ties (as in
    # Matcher). Only these few anchors need the box's index, so their IoU is computed again.
    img, anc = torch.nonzero(foreground, as_tuple=True)  # (F,) each
    box = torch.zeros_like(img)
    if gt_boxes.shape[1]:  # else no image has a box and no anchor is foreground
        iou = box_iou_broadcast(gt_boxes[img], anchors[anc].unsqueeze(1))  # (F, G)
        box = iou.masked_fill_(~usable[img], -1.0).max(dim=1).indices
    matches[img, anc] = box
    labels = matches.clone()
    labels[img, anc] = gt_labels[img, box].long()
    box_targets = torch.zeros(*matches.shape, 4, dtype=gt_boxes.dtype, device=gt_boxes.device)
    box_targets[img, anc] = box_coder.encode(gt_boxes[img, box], anchors[anc])
    return AssignedTargets(labels=labels, matches=matches, box_targets=box_targets)


#: On a CPU, IoU is computed for this many (box, anchor) pairs at a time (~1.5 MB in fp32).
_CPU_CHUNK = 400_000


def _best_ious(boxes: Tensor, image: Tensor, num_images: int, anchors: Tensor) -> tuple[Tensor, ...]:
    """What the matching rule needs from the IoU of every box with every anchor of its image.

    boxes: (N, 4) the batch's real boxes; image: (N,) the image of each; anchors: (A, 4).
    Returns
        per_anchor (num_images, A): each anchor's best IoU with a box of its image (-1 if none);
        per_box (N,): each box's best IoU with an anchor;
        pair_box, pair_anchor (P,): the (box, anchor) pairs where that best IoU is reached, if
        > 0 — every box's best anchors, all ties.

    The (N, A) IoU matrix is never stored: on a CPU it is computed a slice of anchors at a
    time, so each slice stays in the cache through the dozen operations that make and reduce
    it (the whole matrix, 123 MB for 400 boxes × 76,725 anchors, would go through main memory
    each time). Only real boxes are involved, no padding. On a GPU one slice holds them all.
    """
    num_boxes, num_anchors = len(boxes), len(anchors)
    on_cpu = anchors.device.type == "cpu"
    chunk = max(1, _CPU_CHUNK // max(num_boxes, 1)) if on_cpu else max(num_anchors, 1)
    per_box = boxes.new_zeros(num_boxes)
    # Empty first pieces: no anchors at all (A = 0) needs no special case.
    no_index = torch.zeros(0, dtype=torch.long, device=boxes.device)
    per_anchor, pairs = [boxes.new_full((num_images, 0), -1.0)], [(no_index, no_index, boxes.new_zeros(0))]
    for start in range(0, num_anchors, chunk):
        iou = box_iou_broadcast(boxes.unsqueeze(1), anchors[start : start + chunk])  # (N, c)
        image_best = torch.full((num_images, iou.shape[1]), -1.0, dtype=iou.dtype, device=iou.device)
        per_anchor.append(image_best.scatter_reduce_(0, image.unsqueeze(1).expand_as(iou), iou, "amax"))
        best = iou.amax(dim=1)  # (N,) each box's best in this slice
        # A box's best anchors can only be in a slice where it does at least as well as in the
        # slices before (and > 0: a box that misses the slice would tie with all of it). These
        # are candidates; those short of the box's overall best are dropped at the end.
        rows = torch.nonzero((best >= per_box) & (best > 0)).squeeze(1)
        row, anchor = torch.nonzero(iou[rows] == best[rows].unsqueeze(1), as_tuple=True)
        pairs.append((rows[row], anchor + start, best[rows[row]]))
        per_box = torch.maximum(per_box, best)
    box, anchor, value = (torch.cat(t) for t in zip(*pairs, strict=True))
    keep = value == per_box[box]
    return torch.cat(per_anchor, dim=1), per_box, box[keep], anchor[keep]
