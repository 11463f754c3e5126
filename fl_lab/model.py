"""RetinaNet (paper §4): a ResNet + FPN backbone and two small subnets on every level P3–P7.

The parts, in the order data flows through them:

* **backbone** — a torchvision ResNet gives C3, C4, C5 (strides 8, 16, 32); torchvision's
  ``FeaturePyramidNetwork`` turns them into P3–P5 with C channels; P6 is a 3×3 stride-2
  conv on C5 (the paper) or on P5 (torchvision v1), P7 a ReLU and a 3×3 stride-2 conv on P6.
* **class subnet** — 4 × (3×3 conv, C filters, ReLU) then a 3×3 conv with A·K outputs,
  one sigmoid per anchor and class; **box subnet** — the same tower (own weights) ending in
  A·4 outputs, class-agnostic. Each subnet is shared across levels (§4, Figure 3).
* **anchors** — :class:`fl_lab.anchors.AnchorGenerator`, in the same order as the outputs
  (level → row → column → anchor), so index i of the logits, the deltas and the anchors is
  one anchor.

Inputs are normalised images (see :mod:`fl_lab.data.transforms`); outputs cover every anchor.
:meth:`RetinaNet.loss` trains (:func:`fl_lab.detection_loss.detection_loss` on the targets
:meth:`RetinaNet.assign` gives each anchor), :meth:`RetinaNet.detect` turns outputs into boxes
(:func:`fl_lab.postprocess.postprocess`). :mod:`fl_lab.architecture` inspects a model,
:mod:`fl_lab.torchvision_weights` builds one from torchvision's.
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import Conv2dNormActivation

from .anchors import AnchorGenerator
from .boxes import BoxCoder
from .detection_loss import detection_loss
from .matcher import AssignedTargets, Matcher, assign_targets, pad_targets
from .postprocess import postprocess
from .weights import detector_resnet

__all__ = ["BACKBONES", "HEAD_NORMS", "RetinaNet", "RetinaNetOutput"]

#: The ResNets RetinaNet is built on, with the output channels of their C3, C4, C5.
BACKBONES = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
}

#: Normalisation in the subnets: None (the paper) or "gn", GroupNorm(32) (torchvision v2, detectron2 option).
HEAD_NORMS = (None, "gn")


class RetinaNetOutput(NamedTuple):
    """What :meth:`RetinaNet.forward` returns for a batch of B images.

    cls_logits: (B, R, K) class logits (before the sigmoid), R = Σ Hᵢ·Wᵢ·A over the levels.
    box_deltas: (B, R, 4) box regression, encoded as in :class:`fl_lab.boxes.BoxCoder`.
    anchors: (R, 4) x1 y1 x2 y2, shared by the batch.
    anchors_per_level: anchors on P3, P4, … (they sum to R).
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor
    anchors_per_level: list[int]


class P6P7(ExtraFPNBlock):
    """P6 = 3×3 stride-2 conv on C5 (paper) or P5 (torchvision v1); P7 = ReLU, then 3×3 stride-2 conv on P6."""

    def __init__(self, in_channels: int, channels: int, from_p5: bool):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        # FPN convs as in Detectron, the paper's code (Caffe2's XavierFill, U(±sqrt(3 / fan_in)), is
        # kaiming_uniform with a = 1), and torchvision's FPN; §4.1's N(0, 0.01) is for the subnets.
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)
        self.from_p5 = from_p5

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(p[-1] if self.from_p5 else c[-1])
        p7 = self.p7(F.relu(p6))
        return p + [p6, p7], names + ["p6", "p7"]


class Subnet(nn.Module):
    """A RetinaNet head (§4): ``depth`` × (3×3 conv, ReLU), then a 3×3 conv to A × ``outputs_per_anchor``.

    forward(feature (B, C, H, W)) -> (B, H·W·A, outputs_per_anchor), rows in
    row → column → anchor order.
    """

    def __init__(self, channels: int, num_anchors: int, outputs_per_anchor: int, depth: int, norm: Optional[str]):
        super().__init__()
        norm_layer = partial(nn.GroupNorm, 32) if norm == "gn" else None
        self.conv = nn.Sequential(
            *(Conv2dNormActivation(channels, channels, norm_layer=norm_layer) for _ in range(depth))
        )
        self.out = nn.Conv2d(channels, num_anchors * outputs_per_anchor, 3, padding=1)
        self.outputs_per_anchor = outputs_per_anchor
        # §4.1 Initialization: Gaussian weights σ = 0.01, zero bias (the class prior is set by the model).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, feature: Tensor) -> Tensor:
        x = self.out(self.conv(feature))
        b, _, h, w = x.shape
        # (B, A·n, H, W) -> (B, H, W, A, n) -> (B, H·W·A, n): channel a·n + j is anchor a, output j.
        return (x.view(b, -1, self.outputs_per_anchor, h, w).permute(0, 3, 4, 1, 2)
                .reshape(b, -1, self.outputs_per_anchor))


class RetinaNet(nn.Module):
    """RetinaNet with K sigmoid classifiers per anchor.

    Args:
        num_classes: K, the number of object classes, *not counting background*. A sigmoid
            head has no background column: an anchor is background when all K scores are low.
            (Softmax detectors such as Faster R-CNN count background as a class; here
            COCO is K = 80, not 81.)
        backbone: "resnet18", "resnet34", "resnet50" or "resnet101".
        fpn_channels: C, the channels of every pyramid level and head (256 in the paper).
        head_convs: 3×3 convs in each subnet before its output conv (4 in the paper).
        prior: π, the probability every anchor's class scores start at (§3.3): the class
            output's bias is -log((1 - π) / π). None leaves the bias at 0 (p = 0.5), the
            setting with which the paper's CE training diverges.
        p6_from: "c5" (the paper) or "p5" (torchvision v1).
        head_norm: None, or "gn" for GroupNorm(32) in the subnets (torchvision v2, detectron2 option).
        backbone_weights: ImageNet weights for the ResNet: ``"imagenet"`` (torchvision's, fetched
            into the torch hub cache on first use: :func:`fl_lab.weights.imagenet_weights`), a
            path to a state dict file, or a ``torchvision.models.ResNet*_Weights`` value whose
            file is already in the torch hub cache. None trains from scratch. With weights, BatchNorm
            is frozen and the stem and first stage stay fixed (as in the paper's detectron);
            from scratch, BatchNorm trains (:func:`fl_lab.weights.detector_resnet`).
        anchor_generator: defaults to the paper's anchors, :class:`AnchorGenerator()`.
        matcher, box_coder: what :meth:`loss` and :meth:`detect` use; default ``Matcher()``
            (0.5 / 0.4) and ``BoxCoder()``.
        frozen_bn: None follows ``backbone_weights``; True or False forces frozen or training
            BatchNorm (a fine-tuned run rebuilt to load its checkpoint: frozen, no weights).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        fpn_channels: int = 256,
        head_convs: int = 4,
        prior: Optional[float] = 0.01,
        p6_from: str = "c5",
        head_norm: Optional[str] = None,
        backbone_weights: Union[None, str, os.PathLike, torchvision.models.WeightsEnum] = None,
        anchor_generator: Optional[AnchorGenerator] = None,
        matcher: Optional[Matcher] = None,
        box_coder: Optional[BoxCoder] = None,
        frozen_bn: Optional[bool] = None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (object classes, no background), got {num_classes!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        if prior is not None and not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1) or None, got {prior}")
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"p6_from must be 'c5' or 'p5', got {p6_from!r}")
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"head_norm must be one of {HEAD_NORMS}, got {head_norm!r}")
        if fpn_channels < 1 or head_convs < 0 or (head_norm == "gn" and fpn_channels % 32):
            raise ValueError(f"need fpn_channels >= 1 (a multiple of 32 with GroupNorm) and head_convs >= 0, "
                             f"got {fpn_channels} and {head_convs}")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator or AnchorGenerator()
        if self.anchor_generator.strides != (8, 16, 32, 64, 128):
            raise ValueError("RetinaNet's levels P3–P7 have strides 8…128; "
                             f"the anchor generator has {self.anchor_generator.strides}")
        self.matcher = matcher or Matcher()
        self.box_coder = box_coder or BoxCoder()
        num_anchors = self.anchor_generator.num_anchors_per_location

        resnet = detector_resnet(backbone, backbone_weights, frozen_bn)
        c3, c4, c5 = BACKBONES[backbone]
        self.backbone = BackboneWithFPN(
            resnet,
            return_layers={"layer2": "c3", "layer3": "c4", "layer4": "c5"},
            in_channels_list=[c3, c4, c5],
            out_channels=fpn_channels,
            extra_blocks=P6P7(fpn_channels if p6_from == "p5" else c5, fpn_channels, from_p5=p6_from == "p5"),
        )
        self.class_subnet = Subnet(fpn_channels, num_anchors, num_classes, head_convs, head_norm)
        self.box_subnet = Subnet(fpn_channels, num_anchors, 4, head_convs, head_norm)
        if prior is not None:
            # §3.3: start every anchor at p = π so the ~100k easy negatives do not swamp the
            # first iterations' loss.
            nn.init.constant_(self.class_subnet.out.bias, -math.log((1 - prior) / prior))
        # The running foreground-anchor count that normalize="ema" divides by (detectron2's: it
        # starts at 100, as there). A buffer, so that a checkpoint resumes it exactly.
        self.register_buffer("foreground_ema", torch.tensor(100.0))

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> RetinaNetOutput:
        """images: (B, 3, H, W) normalised -> :class:`RetinaNetOutput` for every anchor.

        H and W need not be multiples of 128 (the grids follow
        :meth:`AnchorGenerator.feature_sizes`); multiples of 32 make C3–C5 halve exactly, as
        FPN's top-down merge needs: :func:`fl_lab.data.transforms.collate` pads to that. An empty batch
        (B = 0) raises ``ValueError``: there is nothing to detect and no loss to compute.
        """
        if (not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3
                or not images.is_floating_point()):
            raise ValueError("images must be a float tensor (B, 3, H, W), "
                             f"got {getattr(images, 'shape', type(images))}")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images must hold at least one image of at least 1×1 px, got shape {tuple(images.shape)}")
        features = list(self.backbone(images).values())  # P3 … P7
        image_size = tuple(images.shape[-2:])
        grids = [tuple(f.shape[-2:]) for f in features]
        if grids != self.anchor_generator.feature_sizes(image_size):  # cannot happen with a ResNet; guards edits
            raise RuntimeError(f"feature grids {grids} differ from the anchor grids "
                               f"{self.anchor_generator.feature_sizes(image_size)}")
        cls_logits = torch.cat([self.class_subnet(f) for f in features], dim=1)
        box_deltas = torch.cat([self.box_subnet(f) for f in features], dim=1)
        anchors = self.anchor_generator.gen(image_size, device=images.device)
        return RetinaNetOutput(cls_logits, box_deltas, anchors, self.anchor_generator.num_anchors_per_level(image_size))

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def assign(self, output: RetinaNetOutput, targets: Sequence[dict]) -> AssignedTargets:
        """Match the anchors of ``output`` to each image's boxes with the model's matcher (§4).

        targets: B dicts with ``boxes`` (G_i, 4) x1 y1 x2 y2 and ``labels`` (G_i,) in 0..K-1.
        Returns :class:`~fl_lab.matcher.AssignedTargets` with labels (B, A) (class, -1 background,
        -2 ignored) and encoded box targets (B, A, 4).
        """
        anchors, batch = output.anchors, output.cls_logits.shape[0]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
        for i, t in enumerate(targets):
            for key in ("boxes", "labels"):
                if isinstance(t, dict) and key in t and not isinstance(t[key], Tensor):
                    raise ValueError(f"target {i}: {key} must be a tensor, got {type(t[key]).__name__} "
                                     "(torch.tensor(...) turns a list into one)")
        try:
            boxes, labels, valid = pad_targets([t["boxes"] for t in targets], [t["labels"] for t in targets])
        except (KeyError, TypeError):
            raise ValueError("each target must be a dict with 'boxes' (G, 4) and 'labels' (G,)") from None
        return assign_targets(anchors, boxes.to(anchors.device), labels.to(anchors.device), valid.to(anchors.device),
                              self.matcher, self.box_coder, num_classes=self.num_classes)

    def loss(
        self,
        output: RetinaNetOutput,
        targets: Sequence[dict],
        loss_fn: Union[str, Callable[..., Tensor]] = "focal",
        box_loss: str = "l1",
        beta: float = 0.1,
        normalize: str = "batch",
        cls_weight: float = 1.0,
    ) -> dict[str, Tensor]:
        """The training loss of a batch: classification over all anchors + box regression on foreground.

        output: :meth:`forward`'s result for B images; targets: B dicts with ``boxes`` (G_i, 4)
        x1 y1 x2 y2 and ``labels`` (G_i,) in 0..K-1 (G_i = 0 is fine: every anchor is then
        background). The anchors are matched to them (:meth:`assign`), then
        :func:`fl_lab.detection_loss.detection_loss` computes the loss -- ``loss_fn`` ("focal",
        "ce", "balanced_ce", "focal_star", "ohem" or a callable), ``box_loss``, ``beta``,
        ``normalize`` and ``cls_weight`` are its -- dividing by the model's running foreground
        count for ``normalize="ema"``, which training (not evaluation) updates.

        Returns ``cls`` (unweighted), ``box``, ``total`` = cls_weight · cls + box (scalars) and
        ``num_foreground``.
        """
        return detection_loss(output.cls_logits, output.box_deltas, output.anchors, self.assign(output, targets),
                              loss_fn, box_loss, beta, normalize, cls_weight, foreground_ema=self.foreground_ema,
                              update_ema=self.training, box_coder=self.box_coder)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(
        self,
        output: RetinaNetOutput,
        image_sizes: Sequence[tuple[int, int]],
        score_thresh: float = 0.05,
        topk: int = 1000,
        nms_thresh: float = 0.5,
        max_detections: int = 100,
    ) -> list[dict[str, Tensor]]:
        """Detections per image (§4 Inference), in the input image's pixels: :func:`fl_lab.postprocess.postprocess`
        of ``output`` (``image_sizes``: the B unpadded (H, W)). Returns B dicts with ``boxes`` (D, 4)
        x1 y1 x2 y2, ``scores`` (D,) and ``labels`` (D,) int64 in 0..K-1, by decreasing score.
        """
        return postprocess(output.cls_logits, output.box_deltas, output.anchors, output.anchors_per_level, image_sizes,
                           self.box_coder, score_thresh, topk, nms_thresh, max_detections)
