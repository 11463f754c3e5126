"""Boxes: regression coding, a batched IoU, and checks (what torchvision.ops lacks).

Boxes are ``x1, y1, x2, y2`` in input-image pixels everywhere in fl_lab. IoU of two box
sets, areas and NMS come from ``torchvision.ops`` (``box_iou``, ``box_area``,
``batched_nms``); this module adds only the batched IoU of padded ground truth against a
shared anchor set (and a broadcasting IoU under it), the box coder on any leading shape, and
input validation.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["BoxCoder", "batched_nms_in_runs", "box_iou_batched", "box_iou_broadcast", "check_boxes", "clip_to_image",
           "random_boxes", "rank_in_group", "top_k_per_group"]


def _check_last_dim(**tensors: Tensor) -> None:
    """Raise ValueError naming the first argument that is not a tensor of shape (..., 4)."""
    for name, t in tensors.items():
        if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[-1] != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape (..., 4) (x1, y1, x2, y2 or four deltas), got {shape}")


class BoxCoder:
    """Encode boxes as offsets from anchors, and decode them back (R-CNN parametrisation).

    ``t_x = w_x (x - x_a) / w_a``, ``t_y = w_y (y - y_a) / h_a``, ``t_w = w_w log(w / w_a)``,
    ``t_h = w_h log(h / h_a)`` with (x, y) box centres. RetinaNet uses unit weights (paper
    §4, following Faster R-CNN); ``clamp`` caps t_w, t_h before ``exp`` when decoding so a
    wild prediction cannot overflow. Numerically identical to torchvision's
    ``BoxCoder.encode_single`` / ``decode_single`` (same operations in the same order).

    Inputs are not checked here (a hot path): inverted or NaN boxes give NaN or -inf deltas.
    Every user-facing entry that takes boxes checks them first with :func:`check_boxes`
    (``pad_targets``, ``assign_targets``, the datasets).
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000.0 / 16)):
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """boxes, anchors: (..., 4) broadcastable -> deltas (..., 4) in the boxes' dtype.

        Anchors must have positive width and height. A zero-width or zero-height *box*
        gives t_w or t_h = -inf: filter degenerate boxes before encoding (the matcher does).
        """
        _check_last_dim(boxes=boxes, anchors=anchors)
        anchors = anchors.to(boxes.dtype)
        wx, wy, ww, wh = self.weights
        a_w = anchors[..., 2] - anchors[..., 0]
        a_h = anchors[..., 3] - anchors[..., 1]
        a_x = anchors[..., 0] + 0.5 * a_w
        a_y = anchors[..., 1] + 0.5 * a_h
        b_w = boxes[..., 2] - boxes[..., 0]
        b_h = boxes[..., 3] - boxes[..., 1]
        b_x = boxes[..., 0] + 0.5 * b_w
        b_y = boxes[..., 1] + 0.5 * b_h
        return torch.stack(
            (
                wx * (b_x - a_x) / a_w,
                wy * (b_y - a_y) / a_h,
                ww * torch.log(b_w / a_w),
                wh * torch.log(b_h / a_h),
            ),
            dim=-1,
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """deltas, anchors: (..., 4) broadcastable -> boxes (..., 4).

        Computed in fp32 for half-precision deltas (``exp`` of a clamped 4.1 is 60: fine in
        fp16, but the products with pixel sizes lose too many digits), in fp64 for fp64.
        """
        _check_last_dim(deltas=deltas, anchors=anchors)
        dtype = torch.float32 if deltas.dtype in (torch.float16, torch.bfloat16) else deltas.dtype
        deltas = deltas.to(dtype)
        anchors = anchors.to(dtype)
        wx, wy, ww, wh = self.weights
        a_w = anchors[..., 2] - anchors[..., 0]
        a_h = anchors[..., 3] - anchors[..., 1]
        a_x = anchors[..., 0] + 0.5 * a_w
        a_y = anchors[..., 1] + 0.5 * a_h
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.clamp)
        x = dx * a_w + a_x
        y = dy * a_h + a_y
        half_w = 0.5 * (torch.exp(dw) * a_w)
        half_h = 0.5 * (torch.exp(dh) * a_h)
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1)


def clip_to_image(boxes: Tensor, image_size: tuple[int, int], min_side: float = 1.0) -> tuple[Tensor, Tensor]:
    """Boxes (G, 4) x1 y1 x2 y2 clipped to an (H, W) image, and which to keep (G,) bool: those still at
    least ``min_side`` px wide and high (a box wholly outside the image keeps nothing). What COCO and VOC
    loading do with boxes that reach outside their image."""
    height, width = image_size
    clipped = torch.stack((boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                           boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)), dim=1)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= min_side) & ((clipped[:, 3] - clipped[:, 1]) >= min_side)
    return clipped, keep


def box_iou_batched(boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU of every ground-truth box of every image with every anchor.

    boxes: (B, G, 4) (padded rows allowed: give them any coordinates and mask the result);
    anchors: (A, 4), shared by the batch. Returns (B, G, A), equal per image to
    ``torchvision.ops.box_iou(boxes[b], anchors)``. A zero-area box has IoU 0 everywhere.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(
            "box_iou_batched needs boxes (B, G, 4) and anchors (A, 4), "
            f"got {tuple(boxes.shape)} and {tuple(anchors.shape)}"
        )
    return box_iou_broadcast(boxes.unsqueeze(2), anchors)


def box_iou_broadcast(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of boxes (..., 4) with boxes (..., 4) whose leading shapes broadcast.

    (N, 1, 4) with (M, 4) gives the (N, M) matrix of ``torchvision.ops.box_iou``; (N, 4)
    with (N, 4) the IoU of N pairs. The operations of ``box_iou`` in its order, so the values
    are bit-identical to it; in the dtype of ``boxes1``.
    """
    # One contiguous tensor per coordinate: with strided columns (every 4th float) each
    # broadcast op below is several times slower on a CPU. The copies are small next to the result.
    x1, y1, x2, y2 = (c.contiguous() for c in boxes1.unbind(-1))
    ax1, ay1, ax2, ay2 = (c.contiguous() for c in boxes2.to(boxes1.dtype).unbind(-1))
    # Width and height of the intersection, one coordinate at a time: no (..., 2) temporaries.
    inter_w = (torch.minimum(x2, ax2) - torch.maximum(x1, ax1)).clamp_(min=0)
    inter_h = (torch.minimum(y2, ay2) - torch.maximum(y1, ay1)).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    union = ((x2 - x1) * (y2 - y1) + (ax2 - ax1) * (ay2 - ay1)).sub_(inter)
    return inter.div_(union)


def check_boxes(boxes: Tensor, name: str = "boxes", valid: Optional[Tensor] = None) -> None:
    """Raise ValueError unless boxes (..., 4) are finite with x2 >= x1 and y2 >= y1.

    ``valid`` (boxes.shape[:-1], bool) limits the check to real boxes of a padded batch.
    Zero-area boxes and boxes reaching outside the image are legal.
    """
    if not isinstance(boxes, Tensor) or boxes.dim() < 1 or boxes.shape[-1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} must be a tensor of shape (..., 4) holding x1, y1, x2, y2; got {shape}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if valid is not None and valid.shape != boxes.shape[:-1]:
        raise ValueError(f"the mask of {name} must have shape {tuple(boxes.shape[:-1])}, got {tuple(valid.shape)}")
    bad = ~torch.isfinite(boxes).all(-1)
    bad |= (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        index = tuple(torch.nonzero(bad)[0].tolist())
        coords = [round(v, 2) for v in boxes[index].tolist()]
        where = f"{name}[{', '.join(map(str, index))}]" if index else name
        reason = "is not finite" if not torch.isfinite(boxes[index]).all() else "has x2 < x1 or y2 < y1"
        raise ValueError(f"{where} = {coords} {reason} (boxes are x1, y1, x2, y2); {int(bad.sum())} bad box(es) in all")


def random_boxes(
    num: int,
    image_size: tuple[int, int],
    min_size: float = 8.0,
    max_size: float = 512.0,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``num`` boxes (num, 4) inside an (H, W) image, sides log-uniform in [min_size, max_size].

    Aspect ratios are log-uniform in [1/3, 3]; sides are clipped to the image. A simple box
    source for tests and counts, standing in for a dataset.
    """
    height, width = image_size
    if num < 0 or not 0 < min_size <= max_size:
        raise ValueError(f"need num >= 0 and 0 < min_size <= max_size, got {num}, {min_size}, {max_size}")
    u = torch.rand(num, 4, generator=generator, dtype=torch.float64)
    scale = torch.exp(math.log(min_size) + u[:, 0] * (math.log(max_size) - math.log(min_size)))
    ratio = torch.exp((u[:, 1] * 2 - 1) * math.log(3.0))
    w = (scale / ratio.sqrt()).clamp(max=width)
    h = (scale * ratio.sqrt()).clamp(max=height)
    x1 = u[:, 2] * (width - w)
    y1 = u[:, 3] * (height - h)
    return torch.stack((x1, y1, x1 + w, y1 + h), dim=1).float()


def rank_in_group(group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Rank of each element within its group, keeping the given order, and the group sizes.

    group: (N,) int64 in [0, num_groups). Returns rank (N,) and counts (num_groups,).
    A stable sort by group keeps each group's elements in their original order, so
    rank = position in the sorted list - position of the group's first element.
    """
    sorted_group, order = torch.sort(group, stable=True)
    bounds = torch.searchsorted(sorted_group, torch.arange(num_groups + 1, device=group.device))
    starts, counts = bounds[:-1], bounds.diff()
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.numel(), device=group.device) - starts[sorted_group]
    return rank, counts


def top_k_per_group(group: Tensor, score: Tensor, k: int, num_groups: int) -> Tensor:
    """Indices of the ``k`` highest scores of each group, ordered by group, then by decreasing score.

    ``group``: (N,) int64 in 0..num_groups-1; ``score``: (N,). Ties keep their input order.
    Vectorised (no loop over groups): RetinaNet's inference keeps the top k per image and level,
    then the best detections per image, with it.
    """
    order = torch.argsort(score, descending=True, stable=True)
    rank, _ = rank_in_group(group[order], num_groups)
    kept = order[rank < k]
    return kept[torch.argsort(group[kept], stable=True)]


def batched_nms_in_runs(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                        num_groups: int) -> Tensor:
    """torchvision's ``batched_nms`` (NMS within each group), fast for ~10^4 boxes in ~10^3 groups.

    boxes: (N, 4) x1 y1 x2 y2; scores: (N,); groups: (N,) int64 in 0..num_groups-1. Returns the
    indices kept, group by group, each group's in decreasing score.

    On a CPU, ``batched_nms`` compares every pair of boxes of a call, and above 1,000 boxes (25,000
    on a GPU) it makes one call per group instead: both slow for RetinaNet's candidates. Calls on
    runs of whole groups of ~128 boxes avoid both (on a GPU, whose NMS is parallel, of ~16k). In
    fp64, so that the offsets ``batched_nms`` adds to keep groups apart leave the coordinates exact.
    """
    order = torch.argsort(groups, stable=True)
    counts = torch.bincount(groups, minlength=num_groups)
    run_size = 128 if boxes.device.type == "cpu" else 16_384
    run_of_group = torch.div(torch.cumsum(counts, 0) - counts, run_size, rounding_mode="floor")
    sizes = [n for n in torch.bincount(run_of_group[groups[order]]).tolist() if n]
    runs = zip(*(t.split(sizes) for t in (order, boxes[order].double(), scores[order].double(), groups[order])),
               strict=True)
    kept = [run[batched_nms(b, s, g, iou_threshold)] for run, b, s, g in runs]
    return torch.cat(kept) if kept else order
