"""torchvision's detectors behind fl_lab's model interface (``forward``, ``loss``, ``detect``).

One adapter, :class:`TorchvisionDetector`, lets :func:`fl_lab.train.train` train and
:func:`fl_lab.evaluate.evaluate` score a torchvision detector exactly as they do fl_lab's
:class:`~fl_lab.model.RetinaNet`; only the data feeding is adapted. It has two paths, because
torchvision's detectors open up differently:

* **RetinaNet** exposes its parts, so the adapter runs them one by one on fl_lab's batch:
  ``forward`` is the backbone and head (a :class:`~fl_lab.model.RetinaNetOutput`, as fl_lab's
  model returns), ``loss`` torchvision's matcher and ``head.compute_loss``, ``detect`` its
  ``postprocess_detections``. Both libraries then see identical tensors, which is what the
  benchmarks in ``bench/`` need to compare them part by part.
* **Faster R-CNN and SSD** compute their losses inside ``forward(images, targets)`` (the RPN's
  proposals, the RoI sampling, SSD's mining), so ``loss`` and ``detect`` run the whole model
  and ``forward`` only hands the batch on (:class:`ImagesOnly`). Their labels are shifted by
  one for torchvision's background class 0, and their input transform is told that fl_lab's
  images are already normalised.

Nothing is downloaded: every backbone trains from scratch or starts from a local weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .model import RetinaNetOutput
from .torch_utils import eval_mode
from .weights import detector_resnet

__all__ = ["DETECTORS", "NATIVE_SIZE", "ImagesOnly", "TorchvisionDetector", "build_torchvision_detector", "input_side"]

#: The torchvision detectors fl_lab can train, with the design each stands for.
DETECTORS = {
    "retinanet": "one-stage, focal loss: torchvision's RetinaNet (P6 from P5, its anchors and loss normalisation)",
    "faster_rcnn": "two-stage: RPN + Fast R-CNN head on 512 sampled RoIs at 1:3 fg:bg "
                   "(FPN, the paper's FPN Faster R-CNN)",
    "ssd300": "one-stage, hard negative mining 3:1: SSD300 on VGG-16 (the original SSD; the paper's SSD513 is on "
              "ResNet-101)",
    "ssdlite": "one-stage, hard negative mining 3:1: SSDlite320 on MobileNetV3 (a small SSD for CPUs)",
}
#: The input side (px) each SSD's anchor layout is built for: it resizes every image to it.
NATIVE_SIZE = {"ssd300": 300, "ssdlite": 320}


def input_side(kind: Optional[str], image_size: int) -> int:
    """The side (px) detector ``kind`` (None: fl_lab's RetinaNet) sees images of side ``image_size`` at."""
    return NATIVE_SIZE.get(kind, image_size)


class ImagesOnly(NamedTuple):
    """What :meth:`TorchvisionDetector.forward` returns for Faster R-CNN and SSD: they run their
    whole model in ``loss`` or ``detect``, so the "output" is the batch. images: (B, 3, H, W)."""

    images: Tensor


def build_torchvision_detector(kind: str, num_classes: int, image_size: int, backbone: str = "resnet18",
                               fpn_channels: int = 256, backbone_weights: Union[None, str, Path] = None,
                               frozen_bn: Optional[bool] = None) -> nn.Module:
    """torchvision's detector ``kind`` (a key of :data:`DETECTORS`) for ``num_classes`` object classes.

    RetinaNet and Faster R-CNN get fl_lab's backbone choice and see images at ``image_size`` as
    fl_lab's RetinaNet does: the ResNet (:func:`fl_lab.weights.detector_resnet` — fine-tuned from
    ``backbone_weights`` with frozen BatchNorm and a fixed stem and res2, or from scratch;
    ``frozen_bn`` as there) and an FPN of ``fpn_channels`` (RetinaNet: P3–P5 and P6, P7 from P5,
    torchvision's layout; Faster R-CNN: P2–P6). SSD keeps its own backbone, from scratch, and
    its native input size (300 or 320 px), which its anchor layout needs.
    """
    if kind not in DETECTORS:
        raise ValueError(f"kind must be one of {sorted(DETECTORS)}, got {kind!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if kind.startswith("ssd") and backbone_weights is not None:
        raise ValueError(f"{kind} keeps its own backbone and trains it from scratch: backbone_weights must be None")
    # fl_lab's batches are already normalised: each transform below keeps its resize, not its normalisation.
    same = dict(min_size=image_size, max_size=image_size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0])
    if kind in ("retinanet", "faster_rcnn"):
        resnet = detector_resnet(backbone, backbone_weights, frozen_bn)
        widths = [resnet.inplanes // 8 * 2**i for i in range(4)]  # C2…C5 channels (inplanes is C5's)
        if kind == "retinanet":  # sigmoid classes, no background column: fl_lab's labels as they are
            fpn = BackboneWithFPN(resnet, {f"layer{i + 1}": str(i) for i in range(1, 4)}, widths[1:], fpn_channels,
                                  extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
            return TorchvisionRetinaNet(fpn, num_classes, **same)
        fpn = BackboneWithFPN(resnet, {f"layer{i + 1}": str(i) for i in range(4)}, widths, fpn_channels,
                              extra_blocks=LastLevelMaxPool())
        return FasterRCNN(fpn, num_classes=num_classes + 1, **same)  # class 0 is the background
    build, native = ssd300_vgg16 if kind == "ssd300" else ssdlite320_mobilenet_v3_large, NATIVE_SIZE[kind]
    model = build(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    model.transform = GeneralizedRCNNTransform(native, native, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=1,
                                               fixed_size=(native, native))
    return model


class TorchvisionDetector(nn.Module):
    """A torchvision detector with fl_lab's interface: ``forward``, ``loss``, ``detect``.

    ``amp``: "none", "bf16" or "fp16" — for Faster R-CNN and SSD, whose forward runs inside
    ``loss`` and ``detect``, outside the training loop's autocast, so it applies the same
    precision itself. RetinaNet's forward runs under the loop's autocast like fl_lab's.
    """

    def __init__(self, model: nn.Module, amp: str = "none"):
        super().__init__()
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
        self.tv, self.amp = model, amp
        self.by_parts = isinstance(model, TorchvisionRetinaNet)

    def forward(self, images: Tensor) -> Union[RetinaNetOutput, ImagesOnly]:
        """images: (B, 3, H, W), normalised and padded by :func:`fl_lab.data.collate`.

        RetinaNet: cls_logits (B, R, K), box_deltas (B, R, 4), anchors (R, 4), anchors per level;
        its ``transform`` is bypassed, so it sees exactly fl_lab's tensors. Others: the batch.
        """
        if not self.by_parts:
            return ImagesOnly(images)
        features = list(self.tv.backbone(images).values())  # P3 … P7
        head = self.tv.head(features)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        # The generator takes its dtype from the feature maps: under bf16 autocast anchors would
        # be rounded to 4 px at 512 px. Make them in float32, as fl_lab's are (a no-op in fp32).
        anchors = self.tv.anchor_generator(ImageList(images, [size] * len(images)), [f.float() for f in features])[0]
        per_location = self.tv.anchor_generator.num_anchors_per_location()[0]
        per_level = [f.shape[-2] * f.shape[-1] * per_location for f in features]
        return RetinaNetOutput(head["cls_logits"], head["bbox_regression"], anchors, per_level)

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.float16 if self.amp == "fp16" else torch.bfloat16,
                              enabled=self.amp != "none")

    def loss(self, output: Union[RetinaNetOutput, ImagesOnly], targets: Sequence[dict],
             **ignored) -> dict[str, Tensor]:
        """torchvision's own training losses under fl_lab's keys ``cls``, ``box``, ``total``, ``num_foreground``.

        targets: B dicts with ``boxes`` (G, 4) x1 y1 x2 y2 and ``labels`` (G,) in 0..K-1.
        ``ignored``: fl_lab's loss options, which torchvision's losses do not have.
        RetinaNet: focal + L1, each normalised per image, then averaged; matched as
        ``tv.compute_loss`` does (an image with no boxes: every anchor background);
        ``num_foreground`` counts the matched anchors. Others: ``cls`` holds every
        classification term (RPN objectness + second-stage classes, or SSD's mined CE), ``box``
        every box term; ``num_foreground`` is the objects' count (torchvision does not report
        its sampled positives).
        """
        if self.by_parts:
            return self._retinanet_loss(output, targets)
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

    def _retinanet_loss(self, output: RetinaNetOutput, targets: Sequence[dict]) -> dict[str, Tensor]:
        anchors = output.anchors
        matched = [
            self.tv.proposal_matcher(box_iou(t["boxes"], anchors)) if t["boxes"].numel()
            else torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
            for t in targets
        ]
        # fl_lab.train.train calls loss outside autocast, where fl_lab's focal loss runs in fp32:
        # torchvision's gets fp32 logits too, so that like is compared with like.
        head = {"cls_logits": output.cls_logits.float(), "bbox_regression": output.box_deltas.float()}
        losses = self.tv.head.compute_loss(targets, head, [anchors] * len(targets), matched)
        cls, box = losses["classification"], losses["bbox_regression"]
        return {"cls": cls, "box": box, "total": cls + box,
                "num_foreground": torch.stack([(m >= 0).sum() for m in matched]).sum()}

    @torch.no_grad()
    def detect(self, output: Union[RetinaNetOutput, ImagesOnly], image_sizes: Sequence[tuple[int, int]],
               score_thresh: float = 0.05, topk: int = 1000, nms_thresh: float = 0.5,
               max_detections: int = 100) -> list[dict[str, Tensor]]:
        """B dicts with ``boxes`` (D, 4) x1 y1 x2 y2 in the input's pixels, ``scores`` (D,) and
        ``labels`` (D,) int64 in 0..K-1 — :meth:`fl_lab.model.RetinaNet.detect`'s format and defaults.

        torchvision reads the thresholds from the model's attributes, so they are set there
        (``topk``: RetinaNet's candidates per level; the others have none). Faster R-CNN's and
        SSD's boxes are clipped to each image's unpadded (H, W), as fl_lab's are.
        """
        tv = self.tv
        if self.by_parts:
            tv.score_thresh, tv.topk_candidates, tv.nms_thresh, tv.detections_per_img = (
                score_thresh, topk, nms_thresh, max_detections)
            split = output.anchors_per_level
            head = {"cls_logits": list(output.cls_logits.float().split(split, dim=1)),
                    "bbox_regression": list(output.box_deltas.float().split(split, dim=1))}
            anchors = [list(output.anchors.split(split))] * len(image_sizes)
            return tv.postprocess_detections(head, anchors, [tuple(s) for s in image_sizes])
        if isinstance(tv, FasterRCNN):
            tv.roi_heads.score_thresh, tv.roi_heads.nms_thresh = score_thresh, nms_thresh
            tv.roi_heads.detections_per_img = max_detections
        else:
            tv.score_thresh, tv.nms_thresh, tv.detections_per_img = score_thresh, nms_thresh, max_detections
        with eval_mode(tv), self._autocast(output.images.device):
            raw = tv(list(output.images))
        detections = []
        for det, (h, w) in zip(raw, image_sizes, strict=True):
            boxes = torch.minimum(det["boxes"].float().clamp(min=0), det["boxes"].new_tensor([w, h, w, h]).float())
            detections.append({"boxes": boxes, "scores": det["scores"].float(), "labels": det["labels"] - 1})
        return detections
