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
:meth:`RetinaNet.loss` trains, :meth:`RetinaNet.detect` turns outputs into boxes.
"""

from __future__ import annotations

import inspect
import math
import os
from functools import partial
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import batched_nms
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock
from torchvision.ops.misc import Conv2dNormActivation, FrozenBatchNorm2d

from .anchors import AnchorGenerator
from .boxes import BoxCoder, top_k_per_group
from .loss import balanced_cross_entropy, focal_loss, focal_loss_star
from .matcher import AssignedTargets, Matcher, assign_targets, pad_targets
from .ohem import ohem_loss
from .weights import detector_resnet, from_torchvision_keys

__all__ = ["LOSS_FUNCTIONS", "RetinaNet", "RetinaNetOutput"]

# Output channels of C3, C4, C5 for each ResNet depth.
_BACKBONES = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
}

#: Classification losses :meth:`RetinaNet.loss` knows by name, each with the paper's best
#: setting (Table 1a/1b/1d, Table 3). Pass a callable for any other setting.
LOSS_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "ce": partial(balanced_cross_entropy, alpha=None),  # plain cross-entropy, no α
    "focal": focal_loss,  # γ = 2, α = 0.25
    "balanced_ce": balanced_cross_entropy,  # α = 0.75
    "focal_star": focal_loss_star,  # γ = 2, β = 1
    "ohem": ohem_loss,  # OHEM (§5.1): CE on 128 anchors per image after NMS at 0.5
}

_NORMALIZE = ("batch", "per_image", "ema")


class RetinaNetOutput(NamedTuple):
    """What :meth:`RetinaNet.forward` returns for a batch of B images.

    cls_logits: (B, A_total, K) class logits (before the sigmoid).
    box_deltas: (B, A_total, 4) box regression, encoded as in :class:`fl_lab.boxes.BoxCoder`.
    anchors: (A_total, 4) x1 y1 x2 y2, shared by the batch.
    anchors_per_level: anchors on P3, P4, … (they sum to A_total).
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
        return x.view(b, -1, self.outputs_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, self.outputs_per_anchor)


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
        if backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONES)}, got {backbone!r}")
        if prior is not None and not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1) or None, got {prior}")
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"p6_from must be 'c5' or 'p5', got {p6_from!r}")
        if head_norm not in (None, "gn"):
            raise ValueError(f"head_norm must be None or 'gn', got {head_norm!r}")
        if fpn_channels < 1 or head_convs < 0 or (head_norm == "gn" and fpn_channels % 32):
            raise ValueError(f"need fpn_channels >= 1 (a multiple of 32 with GroupNorm) and head_convs >= 0, "
                             f"got {fpn_channels} and {head_convs}")
        self.num_classes = num_classes
        self.anchor_generator = anchor_generator or AnchorGenerator()
        if self.anchor_generator.strides != (8, 16, 32, 64, 128):
            raise ValueError(f"RetinaNet's levels P3–P7 have strides 8…128; the anchor generator has {self.anchor_generator.strides}")
        self.matcher = matcher or Matcher()
        self.box_coder = box_coder or BoxCoder()
        num_anchors = self.anchor_generator.num_anchors_per_location

        resnet = detector_resnet(backbone, backbone_weights, frozen_bn)
        c3, c4, c5 = _BACKBONES[backbone]
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
        # detectron2's running foreground count for normalize="ema" (starts at 100, as there).
        self.register_buffer("foreground_ema", torch.tensor(100.0))

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> RetinaNetOutput:
        """images: (B, 3, H, W) normalised -> :class:`RetinaNetOutput` for every anchor.

        H and W need not be multiples of 128 (the grids follow
        :meth:`AnchorGenerator.feature_sizes`), but batches padded to 128 keep every
        level's stride exact; :func:`fl_lab.data.transforms.collate` does that. An empty batch
        (B = 0) raises ``ValueError``: there is nothing to detect and no loss to compute.
        """
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B, 3, H, W), got {getattr(images, 'shape', type(images))}")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images must hold at least one image of at least 1×1 px, got shape {tuple(images.shape)}")
        features = list(self.backbone(images).values())  # P3 … P7
        image_size = tuple(images.shape[-2:])
        grids = [tuple(f.shape[-2:]) for f in features]
        if grids != self.anchor_generator.feature_sizes(image_size):  # cannot happen with a ResNet; guards edits
            raise RuntimeError(f"feature grids {grids} differ from the anchor grids {self.anchor_generator.feature_sizes(image_size)}")
        cls_logits = torch.cat([self.class_subnet(f) for f in features], dim=1)
        box_deltas = torch.cat([self.box_subnet(f) for f in features], dim=1)
        anchors = self.anchor_generator.gen(image_size, device=images.device)
        return RetinaNetOutput(cls_logits, box_deltas, anchors, self.anchor_generator.num_anchors_per_level(image_size))

    # ------------------------------------------------------------------ inspection
    def parameter_counts(self) -> dict[str, int]:
        """Parameters of each part: the ResNet, the FPN (with P6, P7) and the two subnets."""
        parts = {"ResNet backbone": self.backbone.body, "FPN (P3–P7)": self.backbone.fpn,
                 "class subnet": self.class_subnet, "box subnet": self.box_subnet}
        return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}

    @torch.no_grad()
    def describe(self, image_size: tuple[int, int]) -> str:
        """A level-by-level table of tensor shapes for one (H, W) image, from a real forward pass."""
        was_training = self.training
        self.eval()
        body = self.backbone.body(torch.zeros(1, 3, *image_size, device=self.class_subnet.out.weight.device))
        pyramid = list(self.backbone.fpn(body).values())
        self.train(was_training)
        c_shapes = [tuple(c.shape[1:]) for c in body.values()] + ["", ""]  # P6, P7 have no C level
        k, a = self.num_classes, self.anchor_generator.num_anchors_per_location
        rows = [f"input {tuple(image_size)} → levels (C: ResNet stage, P: pyramid; shapes are channels × H × W)",
                f"{'level':<6}{'stride':>7}  {'C (ResNet)':<16}{'P (FPN)':<16}{'class out':<16}{'box out':<16}{'anchors':>8}"]
        for i, (p, c) in enumerate(zip(pyramid, c_shapes)):
            _, ch, h, w = p.shape
            rows.append(f"P{i + 3:<5}{2 ** (i + 3):>7}  {' × '.join(map(str, c)) if c else '—':<16}{f'{ch} × {h} × {w}':<16}"
                        f"{f'{a * k} × {h} × {w}':<16}{f'{a * 4} × {h} × {w}':<16}{h * w * a:>8,}")
        return "\n".join(rows)

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

        Args:
            output: :meth:`forward`'s result for B images.
            targets: B dicts with ``boxes`` (G_i, 4) x1 y1 x2 y2 and ``labels`` (G_i,) in 0..K-1;
                G_i = 0 (no objects) is fine: every anchor is then background.
            loss_fn: "focal" (γ 2, α 0.25), "ce", "balanced_ce" (α 0.75), "focal_star" (γ 2, β 1),
                "ohem" (online hard example mining, Table 1d: CE on each image's 128 highest-loss
                anchors after NMS 0.5), or a callable ``f(logits (B, A, K), labels (B, A),
                reduction="sum"|"none")`` in the form of :func:`fl_lab.loss.focal_loss` (e.g.
                ``partial(focal_loss, gamma=1, alpha=0.5)``). A callable with a ``boxes``
                parameter (as :func:`fl_lab.ohem.ohem_loss`) also gets ``boxes=`` the predicted
                boxes (B, A, 4), decoded without gradient.
            box_loss: "l1" (torchvision, detectron2) or "smooth_l1" (the paper) with ``beta``.
            normalize: "batch" — divide both sums by the batch's foreground-anchor count (§4.1;
                under torch.distributed, the whole batch's count, all-reduced);
                "per_image" — per image by its own count, then average (torchvision);
                "ema" — by a running average of the count (detectron2, momentum 0.9).
            cls_weight: the classification loss's weight in ``total`` (the paper: 1). A control
                of the kit's FL-vs-CE study: it changes the loss's size, not its shape.

        Returns:
            dict with ``cls`` (unweighted), ``box``, ``total`` = cls_weight · cls + box (scalars)
            and ``num_foreground``.
        """
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
        if box_loss not in ("l1", "smooth_l1"):
            raise ValueError(f"box_loss must be 'l1' or 'smooth_l1', got {box_loss!r}")
        if not (isinstance(cls_weight, (int, float)) and cls_weight > 0 and math.isfinite(cls_weight)):
            raise ValueError(f"cls_weight must be a positive finite number, got {cls_weight!r}")
        if isinstance(loss_fn, str):
            if loss_fn not in LOSS_FUNCTIONS:
                raise ValueError(f"loss_fn must be one of {sorted(LOSS_FUNCTIONS)} or a callable, got {loss_fn!r}")
            # The labels come from assign_targets, valid by construction, and non-finite logits are the
            # training loop's to catch without waiting for the device: skip the loss's own value checks,
            # each of which reads a tensor back to the host.
            loss_fn = partial(LOSS_FUNCTIONS[loss_fn], check_values=False)
        cls_logits, box_deltas, anchors = output.cls_logits, output.box_deltas, output.anchors
        assigned = self.assign(output, targets)
        foreground = assigned.foreground  # (B, A)
        try:  # works for functools.partial too
            takes_boxes = "boxes" in inspect.signature(loss_fn).parameters
        except (TypeError, ValueError):  # a callable without a signature
            takes_boxes = False
        extra = {}
        if takes_boxes:  # OHEM's NMS runs on the predicted boxes (§5.1)
            with torch.no_grad():
                extra["boxes"] = self.box_coder.decode(box_deltas.detach(), anchors)  # (B, A, 4)

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
                # Under DistributedDataParallel each replica sees part of the batch and the
                # gradients are averaged: divide by the mean count over replicas, so the
                # result is the paper's sum over the whole batch ÷ its foreground count.
                torch.distributed.all_reduce(normaliser)
                normaliser = normaliser / torch.distributed.get_world_size()
            normaliser = normaliser.clamp(min=1)
            if normalize == "ema":
                normaliser = 0.9 * self.foreground_ema + 0.1 * normaliser
                if self.training:
                    self.foreground_ema.copy_(normaliser.detach())
            cls = loss_fn(cls_logits, assigned.labels, reduction="sum", **extra) / normaliser
            box = box_per_anchor.sum() / normaliser
        return {"cls": cls, "box": box, "total": cls_weight * cls + box, "num_foreground": fg_per_image.sum()}

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
        """Detections per image (§4 Inference), in the input image's pixels.

        On each level keep the ``topk`` highest scores over anchors × classes that exceed
        ``score_thresh``, decode those boxes and clip them to the image's (H, W) in
        ``image_sizes`` (the unpadded sizes); merge the levels and run class-aware NMS;
        keep the best ``max_detections``.

        Returns B dicts with ``boxes`` (D, 4) x1 y1 x2 y2, ``scores`` (D,) and ``labels``
        (D,) int64 in 0..K-1, sorted by decreasing score.

        The whole batch is processed at once, as a flat list of candidates (image, anchor,
        class) that shrinks at each step: no Python loop over images or classes.
        """
        cls_logits, box_deltas, anchors = output.cls_logits, output.box_deltas, output.anchors
        batch, _, num_classes = cls_logits.shape
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
        device = cls_logits.device

        # Candidates. Of the B·A·K scores, only those of a few anchors are computed: in each
        # image and level, the topk anchors by best score (the best pairs of these beat every
        # pair of the other anchors, which therefore cannot make the topk), if that best score
        # passes score_thresh (sigmoid increases; the 0.1 % margin covers its rounding).
        best = cls_logits.amax(dim=2)  # (B, A) each anchor's best logit
        ends = torch.tensor(output.anchors_per_level).cumsum(0).tolist()
        anc = torch.cat([start + best[:, start:end].topk(min(topk, end - start), dim=1).indices
                         for start, end in zip([0, *ends[:-1]], ends)], dim=1)  # (B, ≤ levels·topk)
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
        boxes = self.box_coder.decode(box_deltas[img, anc], anchors[anc])  # (C, 4)
        limits = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes.dtype, device=device)
        boxes = torch.minimum(boxes.clamp(min=0), limits[img])

        # Class-aware NMS in each image: batched_nms over groups image·K + class. On a CPU its NMS
        # compares every pair of boxes of a call, and above 1,000 boxes (25,000 on a GPU) it
        # makes one call per group instead: both slow for a batch's ~10^4 candidates in ~10^3
        # groups. Calls on runs of whole groups of ~128 boxes avoid both (on a GPU, whose NMS
        # is parallel, of ~16k). In fp64, so that the offsets batched_nms adds to keep groups
        # apart leave the coordinates exact.
        groups = img * num_classes + labels
        order = torch.argsort(groups, stable=True)
        counts = torch.bincount(groups, minlength=batch * num_classes)
        run_size = 128 if device.type == "cpu" else 16_384
        run_of_group = torch.div(torch.cumsum(counts, 0) - counts, run_size, rounding_mode="floor")
        sizes = [n for n in torch.bincount(run_of_group[groups[order]]).tolist() if n]
        runs = zip(*(t.split(sizes) for t in (order, boxes[order].double(), scores[order].double(), groups[order])))
        kept = [run[batched_nms(b, s, g, nms_thresh)] for run, b, s, g in runs]
        keep = torch.cat(kept) if kept else order

        # The max_detections best of each image, in order of decreasing score.
        keep = keep[top_k_per_group(img[keep], scores[keep], max_detections, batch)]
        per_image = torch.bincount(img[keep], minlength=batch).tolist()
        split = [t[keep].split(per_image) for t in (boxes, scores, labels)]
        return [{"boxes": b, "scores": s, "labels": l} for b, s, l in zip(*split)]

    # ------------------------------------------------------------------ torchvision import
    @classmethod
    def from_torchvision(cls, model_or_state_dict: Union[nn.Module, dict], bn_eps: Optional[float] = None) -> "RetinaNet":
        """An fl_lab copy of torchvision's ``retinanet_resnet50_fpn`` (v1) with its weights.

        Configured as torchvision builds it: ResNet-50, P6 from P5, the torchvision anchor
        preset (:meth:`AnchorGenerator.torchvision`), frozen BatchNorm. Pass the model or its
        state dict (e.g. ``torch.load(file, weights_only=True)`` of torchvision's COCO weights
        file; its older head-key format is accepted). K is read from the class output. Inputs
        must be normalised the same way (ImageNet mean and std), and for identical anchors the
        image sides must be multiples of 128.

        ``bn_eps``: the frozen BatchNorm's ε. By default it is read from a model; a state dict
        does not hold it, and then 0 is used, the value torchvision sets for its COCO_V1
        weights (they come from a detectron-style training without ε).
        """
        if isinstance(model_or_state_dict, nn.Module):
            state = model_or_state_dict.state_dict()
            if bn_eps is None:
                bn_eps = next((m.eps for m in model_or_state_dict.modules() if hasattr(m, "running_var")), 1e-5)
        else:
            state = dict(model_or_state_dict)
        bn_eps = 0.0 if bn_eps is None else float(bn_eps)
        renamed = from_torchvision_keys(state)
        num_anchors = renamed["box_subnet.out.weight"].shape[0] // 4
        num_classes = renamed["class_subnet.out.weight"].shape[0] // num_anchors
        model = cls(num_classes, backbone="resnet50", p6_from="p5", anchor_generator=AnchorGenerator.torchvision(),
                    frozen_bn=True)
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = bn_eps
        renamed["foreground_ema"] = model.foreground_ema
        missing, unexpected = model.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise ValueError(f"torchvision state dict does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model
