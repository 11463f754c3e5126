"""RetinaNet's inference (§4 Inference): from scores and box deltas on every anchor to detections.

:func:`postprocess` is what :meth:`fl_lab.model.RetinaNet.detect` runs: per level the top 1000
candidates above a 0.05 score, decoded and clipped; then class-aware NMS at 0.5 and the best 100
per image. The whole batch is processed at once, as a flat list of candidates (image, anchor,
class) that shrinks at each step: no Python loop over images or classes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .boxes import BoxCoder, batched_nms_in_runs, top_k_per_group

__all__ = ["postprocess"]


def _check(cls_logits: Tensor, box_deltas: Tensor, image_sizes, score_thresh, nms_thresh, topk, max_detections):
    batch = cls_logits.shape[0]
    if len(image_sizes) != batch:
        raise ValueError(f"got {len(image_sizes)} image sizes for a batch of {batch} images")
    for h, w in image_sizes:
        if not (h > 0 and w > 0):
            raise ValueError(f"image sizes must be positive (height, width), got {(h, w)}")
    for name, t in (("cls_logits", cls_logits), ("box_deltas", box_deltas)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} hold NaN or infinite values: the model's outputs are not usable "
                             "(did its training diverge?)")
    if not 0.0 <= score_thresh < 1.0:  # also rejects NaN
        raise ValueError(f"score_thresh must be in [0, 1), got {score_thresh}")
    if not 0.0 < nms_thresh <= 1.0:
        raise ValueError(f"nms_thresh must be in (0, 1], got {nms_thresh}")
    for name, value in (("topk", topk), ("max_detections", max_detections)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@torch.no_grad()
def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    anchors_per_level: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float = 0.05,
    topk: int = 1000,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
) -> list[dict[str, Tensor]]:
    """Detections per image, in the input image's pixels.

    Args:
        cls_logits: (B, R, K) class logits over R = Σ Hᵢ·Wᵢ·A anchors; box_deltas: (B, R, 4);
        anchors: (R, 4) x1 y1 x2 y2; anchors_per_level: R split by level (P3, P4, …).
        image_sizes: B unpadded (H, W): boxes are clipped to them.
        On each level keep the ``topk`` highest scores over anchors × classes that exceed
        ``score_thresh``, decode those boxes and clip them; merge the levels and run class-aware
        NMS at ``nms_thresh``; keep the best ``max_detections``.

    Returns B dicts with ``boxes`` (D, 4) x1 y1 x2 y2, ``scores`` (D,) and ``labels`` (D,) int64
    in 0..K-1, sorted by decreasing score.
    """
    _check(cls_logits, box_deltas, image_sizes, score_thresh, nms_thresh, topk, max_detections)
    batch, _, num_classes = cls_logits.shape
    device = cls_logits.device

    # Candidates. Of the B·R·K scores, only those of a few anchors are computed: in each image and
    # level, the topk anchors by best score (the best pairs of these beat every pair of the other
    # anchors, which therefore cannot make the topk), if that best score passes score_thresh
    # (sigmoid increases; the 0.1 % margin covers its rounding).
    best = cls_logits.amax(dim=2)  # (B, R) each anchor's best logit
    ends = torch.tensor(list(anchors_per_level)).cumsum(0).tolist()
    anc = torch.cat([start + best[:, start:end].topk(min(topk, end - start), dim=1).indices
                     for start, end in zip([0, *ends[:-1]], ends, strict=True)], dim=1)  # (B, ≤ levels·topk)
    img = torch.arange(batch, device=device).unsqueeze(1).expand_as(anc)
    passes = best.gather(1, anc).sigmoid() >= 0.999 * score_thresh
    img, anc = img[passes], anc[passes]
    scores = cls_logits[img, anc].sigmoid()  # (M, K)
    row, labels = torch.nonzero(scores > score_thresh, as_tuple=True)
    img, anc, scores = img[row], anc[row], scores[row, labels]

    # The topk best of each image and level (the same set as topk first, then the threshold).
    level = torch.searchsorted(torch.tensor(ends, device=device), anc, right=True)
    keep = top_k_per_group(img * len(ends) + level, scores, topk, batch * len(ends))
    img, anc, scores, labels = img[keep], anc[keep], scores[keep], labels[keep]
    boxes = box_coder.decode(box_deltas[img, anc], anchors[anc])  # (C, 4)
    limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=device)
    boxes = torch.minimum(boxes.clamp(min=0), limits[img])

    # Class-aware NMS in each image: groups image·K + class.
    keep = batched_nms_in_runs(boxes, scores, img * num_classes + labels, nms_thresh, batch * num_classes)

    # The max_detections best of each image, in order of decreasing score.
    keep = keep[top_k_per_group(img[keep], scores[keep], max_detections, batch)]
    per_image = torch.bincount(img[keep], minlength=batch).tolist()
    split = [t[keep].split(per_image) for t in (boxes, scores, labels)]
    return [{"boxes": b, "scores": s, "labels": c} for b, s, c in zip(*split, strict=True)]
