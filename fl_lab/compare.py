"""One-stage vs two-stage (the paper's Figure 2 at small scale): torchvision's detectors behind
fl_lab's interface, and a fair inference timer.

The paper sets RetinaNet (one stage, focal loss) against two families (§1, §2):

* **two-stage** — Faster R-CNN with FPN: a region proposal network, then a second stage that
  classifies a *sampled* minibatch of proposals with a fixed 1:3 foreground : background
  ratio (torchvision: ``box_batch_size_per_image=512``, ``box_positive_fraction=0.25``);
* **one-stage with hard negative mining** — SSD, which keeps the hardest negatives at 3:1
  (torchvision's ``SSD.compute_loss``, ``neg_to_pos_ratio=3``): the heuristic the focal loss
  replaces.

:class:`TorchvisionDetector` wraps torchvision's model, unchanged, so that
:func:`fl_lab.train.train` trains it and :func:`fl_lab.evaluate.evaluate` scores it exactly
as they do fl_lab's :class:`~fl_lab.model.RetinaNet`: only the data feeding is adapted
(labels shifted by one for torchvision's background class 0, and its input transform told
that images are already normalised). Nothing is downloaded: ``weights=None``.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["DETECTORS", "ImagesOnly", "TorchvisionDetector", "build_torchvision_detector", "inference_ms_per_image"]

#: The torchvision detectors the comparison knows, with the design each stands for.
DETECTORS = {
    "faster_rcnn": "two-stage: RPN + Fast R-CNN head on 512 sampled RoIs at 1:3 fg:bg (FPN, the paper's FPN Faster R-CNN)",
    "ssd300": "one-stage, hard negative mining 3:1: SSD300 on VGG-16 (the paper's SSD)",
    "ssdlite": "one-stage, hard negative mining 3:1: SSDlite320 on MobileNetV3 (a small SSD for CPUs)",
}


class ImagesOnly(NamedTuple):
    """What :meth:`TorchvisionDetector.forward` returns: torchvision runs its whole model in
    ``loss`` or ``detect``, so the "output" is the batch it will run on. images: (B, 3, H, W)."""

    images: Tensor


def build_torchvision_detector(kind: str, num_classes: int, image_size: int, backbone: str = "resnet18") -> nn.Module:
    """torchvision's detector ``kind`` (a key of :data:`DETECTORS`) for ``num_classes`` object classes, from scratch.

    Faster R-CNN gets fl_lab's backbone choice (a ResNet + FPN with BatchNorm, as fl_lab trains
    from scratch) and sees images at ``image_size`` like RetinaNet; SSD keeps its own backbone
    and its native input size (300 or 320 px), which its fixed anchor layout needs.
    """
    if kind not in DETECTORS:
        raise ValueError(f"kind must be one of {sorted(DETECTORS)}, got {kind!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    classes = num_classes + 1  # torchvision's class 0 is the background
    if kind == "faster_rcnn":
        fpn = resnet_fpn_backbone(backbone_name=backbone, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
        return FasterRCNN(fpn, num_classes=classes, min_size=image_size, max_size=image_size,
                          image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    build, native = (ssd300_vgg16, 300) if kind == "ssd300" else (ssdlite320_mobilenet_v3_large, 320)
    model = build(weights=None, weights_backbone=None, num_classes=classes)
    # fl_lab's batches are already normalised: keep SSD's resize to its native size, drop its normalisation.
    model.transform = GeneralizedRCNNTransform(native, native, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=1,
                                               fixed_size=(native, native))
    return model


class TorchvisionDetector(nn.Module):
    """A torchvision detector with fl_lab's interface: ``forward``, ``loss``, ``detect``.

    ``amp``: "none", "bf16" or "fp16" — torchvision's forward runs inside ``loss`` and
    ``detect``, outside the training loop's autocast, so it applies the same precision itself.
    """

    def __init__(self, model: nn.Module, amp: str = "none"):
        super().__init__()
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
        self.tv, self.amp = model, amp

    def forward(self, images: Tensor) -> ImagesOnly:
        """images: (B, 3, H, W), normalised and padded by :func:`fl_lab.data.collate`."""
        return ImagesOnly(images)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.float16 if self.amp == "fp16" else torch.bfloat16,
                              enabled=self.amp != "none")

    def loss(self, output: ImagesOnly, targets: Sequence[dict], **ignored) -> dict[str, Tensor]:
        """torchvision's own training losses, summed into fl_lab's keys.

        targets: B dicts with ``boxes`` (G, 4) x1 y1 x2 y2 and ``labels`` (G,) in 0..K-1.
        ``cls`` holds every classification term (RPN objectness + second-stage classes, or
        SSD's mined CE), ``box`` every box term; ``num_foreground`` is the objects' count
        (torchvision does not report its sampled positives). ``ignored``: fl_lab's loss options.
        """
        images = output.images
        tv_targets = [{"boxes": t["boxes"].to(images.device), "labels": t["labels"].to(images.device) + 1}
                      for t in targets]
        self.tv.train(self.training)
        with self._autocast(images.device):
            losses = self.tv(list(images), tv_targets)
        cls = sum(v.float() for k, v in losses.items() if "class" in k or "objectness" in k)
        box = sum(v.float() for k, v in losses.items() if "box" in k or "bbox" in k)
        return {"cls": cls, "box": box, "total": cls + box,
                "num_foreground": torch.tensor(sum(len(t["boxes"]) for t in targets), device=images.device)}

    @torch.no_grad()
    def detect(self, output: ImagesOnly, image_sizes: Sequence[tuple[int, int]], score_thresh: float = 0.05,
               nms_thresh: float = 0.5, max_detections: int = 100, **ignored) -> list[dict[str, Tensor]]:
        """B dicts with ``boxes`` (D, 4) x1 y1 x2 y2 in the input's pixels, ``scores`` (D,) and
        ``labels`` (D,) int64 in 0..K-1 — :meth:`fl_lab.model.RetinaNet.detect`'s format.

        The thresholds are set on torchvision's model (its attributes); boxes are clipped to
        each image's unpadded (H, W), as fl_lab's are.
        """
        tv = self.tv
        if isinstance(tv, FasterRCNN):
            tv.roi_heads.score_thresh, tv.roi_heads.nms_thresh = score_thresh, nms_thresh
            tv.roi_heads.detections_per_img = max_detections
        else:
            tv.score_thresh, tv.nms_thresh, tv.detections_per_img = score_thresh, nms_thresh, max_detections
        was_training = tv.training
        tv.eval()
        try:
            with self._autocast(output.images.device):
                raw = tv(list(output.images))
        finally:
            tv.train(was_training)
        detections = []
        for det, (h, w) in zip(raw, image_sizes):
            boxes = torch.minimum(det["boxes"].float().clamp(min=0), det["boxes"].new_tensor([w, h, w, h]).float())
            detections.append({"boxes": boxes, "scores": det["scores"].float(), "labels": det["labels"] - 1})
        return detections


def inference_ms_per_image(
    model: nn.Module,
    images: Tensor,
    image_sizes: Optional[Sequence[tuple[int, int]]] = None,
    repeats: int = 5,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median milliseconds per image of ``model.detect(model(images), image_sizes)`` in eval mode.

    images: (B, 3, H, W) on the model's device. The first ``warmup`` calls are not timed
    (allocator, kernel selection, lazy initialisation); on a GPU each timed call starts and
    ends with a synchronisation, so the time is the device's, not the launch's.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    sizes = list(image_sizes) if image_sizes is not None else [tuple(images.shape[-2:])] * len(images)
    device = images.device
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.no_grad():
            for i in range(warmup + repeats):
                sync()
                start = clock()
                model.detect(model(images), sizes)
                sync()
                if i >= warmup:
                    times.append(clock() - start)
    finally:
        model.train(was_training)
    return 1e3 * float(torch.tensor(times).median()) / len(images)

