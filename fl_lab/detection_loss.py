"""RetinaNet's training loss (§4.1): classification over every anchor + box regression on foreground.

:func:`detection_loss` takes the model's outputs and the targets already assigned to its anchors
(:func:`fl_lab.matcher.assign_targets`) and returns the loss a training step minimises. The
classification loss is chosen by name from :data:`LOSS_FUNCTIONS` or passed as a callable; both
sums are divided by a count of foreground anchors, as §4.1 prescribes (:data:`NORMALIZE`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import BoxCoder
from .loss import balanced_cross_entropy, focal_loss, focal_loss_star
from .matcher import AssignedTargets
from .ohem import ohem_loss

__all__ = ["BOX_LOSSES", "LOSS_FUNCTIONS", "NORMALIZE", "detection_loss", "needs_predicted_boxes"]

#: Classification losses known by name, each with the paper's best setting (Table 1a/1b/1d,
#: Table 3). Pass a callable for any other setting.
LOSS_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "ce": partial(balanced_cross_entropy, alpha=None),  # plain cross-entropy, no α
    "focal": focal_loss,  # γ = 2, α = 0.25
    "balanced_ce": balanced_cross_entropy,  # α = 0.75
    "focal_star": focal_loss_star,  # γ = 2, β = 1
    "ohem": ohem_loss,  # OHEM (§5.1): CE on 128 anchors per image after NMS at 0.5
}

#: How the summed losses are normalised: by the batch's foreground count (§4.1), per image
#: (torchvision), or by a running average of the count (detectron2).
NORMALIZE = ("batch", "per_image", "ema")

#: Box regression losses: "l1" (torchvision, detectron2) or "smooth_l1" (the paper, with β).
BOX_LOSSES = ("l1", "smooth_l1")

def needs_predicted_boxes(loss_fn: Callable[..., Tensor]) -> bool:
    """Whether a classification loss takes ``boxes=`` the predicted boxes (B, A, 4): a loss declares
    it with the attribute ``needs_predicted_boxes = True`` (as :func:`fl_lab.ohem.ohem_loss`, whose
    NMS runs on them), also through ``functools.partial``."""
    while isinstance(loss_fn, partial):
        loss_fn = loss_fn.func
    return bool(getattr(loss_fn, "needs_predicted_boxes", False))


def _resolve(loss_fn: Union[str, Callable[..., Tensor]]) -> Callable[..., Tensor]:
    if callable(loss_fn):
        return loss_fn
    if loss_fn not in LOSS_FUNCTIONS:
        raise ValueError(f"loss_fn must be one of {sorted(LOSS_FUNCTIONS)} or a callable, got {loss_fn!r}")
    # The labels come from assign_targets, valid by construction, and non-finite logits are the
    # training loop's to catch without waiting for the device: skip the loss's own value checks,
    # each of which reads a tensor back to the host.
    return partial(LOSS_FUNCTIONS[loss_fn], check_values=False)


def detection_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    assigned: AssignedTargets,
    loss_fn: Union[str, Callable[..., Tensor]] = "focal",
    box_loss: str = "l1",
    beta: float = 0.1,
    normalize: str = "batch",
    cls_weight: float = 1.0,
    foreground_ema: Optional[Tensor] = None,
    update_ema: bool = False,
    box_coder: Optional[BoxCoder] = None,
) -> dict[str, Tensor]:
    """The training loss of a batch of B images over R = Σ Hᵢ·Wᵢ·A anchors and K classes.

    Args:
        cls_logits: (B, R, K) class logits; box_deltas: (B, R, 4) encoded box regression;
        anchors: (R, 4) x1 y1 x2 y2 (only OHEM uses them, to decode the predicted boxes).
        assigned: each anchor's target (:class:`~fl_lab.matcher.AssignedTargets`): labels (B, R)
            (class, -1 background, -2 ignored) and box_targets (B, R, 4).
        loss_fn: a name of :data:`LOSS_FUNCTIONS` or a callable ``f(logits (B, R, K), labels (B, R),
            reduction="sum"|"none")`` in the form of :func:`fl_lab.loss.focal_loss` (e.g.
            ``partial(focal_loss, gamma=1, alpha=0.5)``); one that declares
            :func:`needs_predicted_boxes` also gets ``boxes=`` (B, R, 4), decoded without gradient.
        box_loss: one of :data:`BOX_LOSSES`; ``beta``: smooth L1's.
        normalize: "batch" -- divide both sums by the batch's foreground-anchor count (§4.1;
            under torch.distributed, the whole batch's count); "per_image" -- per image by its
            own count, then average (torchvision); "ema" -- by a running average of the count,
            ``foreground_ema`` (a scalar buffer), updated in place when ``update_ema``.
        cls_weight: the classification loss's weight in ``total`` (the paper: 1). A control of the
            kit's FL-vs-CE study: it changes the loss's size, not its shape.

    Returns ``cls`` (unweighted), ``box``, ``total`` = cls_weight · cls + box (scalars) and
    ``num_foreground``.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
    if not (isinstance(cls_weight, (int, float)) and cls_weight > 0 and math.isfinite(cls_weight)):
        raise ValueError(f"cls_weight must be a positive finite number, got {cls_weight!r}")
    if normalize == "ema" and foreground_ema is None:
        raise ValueError("normalize='ema' needs foreground_ema, the running count (RetinaNet keeps one)")
    loss_fn = _resolve(loss_fn)
    extra = {}
    if needs_predicted_boxes(loss_fn):  # OHEM's NMS runs on the predicted boxes (§5.1)
        with torch.no_grad():
            extra["boxes"] = (box_coder or BoxCoder()).decode(box_deltas.detach(), anchors)  # (B, R, 4)

    foreground = assigned.foreground  # (B, R)
    deltas, box_targets = box_deltas[foreground].float(), assigned.box_targets[foreground].float()
    if box_loss == "l1":
        box_per_anchor = F.l1_loss(deltas, box_targets, reduction="none").sum(-1)
    else:
        box_per_anchor = F.smooth_l1_loss(deltas, box_targets, reduction="none", beta=beta).sum(-1)

    fg_per_image = foreground.sum(1)  # (B,)
    if normalize == "per_image":
        cls_per_image = loss_fn(cls_logits, assigned.labels, reduction="none", **extra).sum((1, 2))
        box_per_image = torch.zeros_like(cls_per_image).index_add(0, torch.nonzero(foreground)[:, 0], box_per_anchor)
        per_image = fg_per_image.clamp(min=1).to(cls_per_image.dtype)
        cls, box = (cls_per_image / per_image).mean(), (box_per_image / per_image).mean()
    else:
        normaliser = fg_per_image.sum().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Under DistributedDataParallel each replica sees part of the batch and the gradients
            # are averaged: divide by the mean count over replicas, so that the result is the
            # paper's sum over the whole batch ÷ its foreground count.
            torch.distributed.all_reduce(normaliser)
            normaliser = normaliser / torch.distributed.get_world_size()
        normaliser = normaliser.clamp(min=1)
        if normalize == "ema":
            # A batch with few objects has a small count, and dividing by it makes that batch's
            # loss (and gradient) jump; a running average smooths the scale over batches.
            normaliser = 0.9 * foreground_ema + 0.1 * normaliser  # detectron2's momentum
            if update_ema:
                foreground_ema.copy_(normaliser.detach())
        cls = loss_fn(cls_logits, assigned.labels, reduction="sum", **extra) / normaliser
        box = box_per_anchor.sum() / normaliser
    return {"cls": cls, "box": box, "total": cls_weight * cls + box, "num_foreground": fg_per_image.sum()}
