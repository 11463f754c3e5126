"""What a training run needs: :class:`Config` (each field also a command-line option) and the named
:data:`PRESETS`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Optional

from ..detection_loss import BOX_LOSSES, LOSS_FUNCTIONS, NORMALIZE
from ..fast_mode import fast_mode
from ..model import BACKBONES, HEAD_NORMS
from .loop import TrainSettings

__all__ = ["ANCHOR_RATIOS", "FAST_LESSON", "PRESETS", "Config", "lesson_config"]

#: Aspect ratios per anchor location that a run may ask for: 1 (1:1) or 3 (the paper's 1:2, 1:1, 2:1).
ANCHOR_RATIOS = {1: (1.0,), 3: (0.5, 1.0, 2.0)}


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    """Everything a run needs; each field is also a command-line option (``--field-name``)."""

    # data
    dataset: str = _opt("shapes", "shapes (built in), coco or voc", choices=("shapes", "coco", "voc"))
    data_root: str = _opt("data", "coco: folder with train2017/, val2017/, annotations/; voc: folder with VOCdevkit/")
    image_size: int = _opt(128, "Shapes: image side; COCO/VOC: shorter side after resizing (paper: 600 or 800)")
    max_size: int = _opt(1333, "COCO/VOC: cap on the longer side after resizing")
    train_images: int = _opt(2000, "Shapes: training images")
    val_images: int = _opt(200, "Shapes: validation images (a different seed)")
    num_classes: int = _opt(5, "Shapes: number of shape classes (COCO and VOC bring their own)")
    min_objects: int = _opt(1, "Shapes: fewest objects per image")
    max_objects: int = _opt(30, "Shapes: most objects per image")
    empty_fraction: float = _opt(0.0, "Shapes: share of images without any object "
                                 "(sparsity: more negatives per positive)")
    min_object_size: float = _opt(32.0, "Shapes: smallest object side in pixels (32: every object has an anchor with "
                                  "IoU >= 0.5)")
    max_object_size: Optional[float] = _opt(None, "Shapes: largest object side in pixels, the square root of its "
                                            "frame's area (none: three quarters of the image)")
    input_size: Optional[int] = _opt(None, "Shapes: resize every image and its boxes to this side before the model "
                                     "sees it, the paper's input scale (Figure 2); AP is still measured in the "
                                     "image's own pixels (none: the image side)")
    # model
    backbone: str = _opt("resnet18", ", ".join(BACKBONES), choices=tuple(BACKBONES))
    fpn_channels: int = _opt(256, "channels of P3-P7 and the heads (paper: 256)")
    head_convs: int = _opt(4, "3x3 convs in each subnet before its output (paper: 4)")
    head_norm: Optional[str] = _opt(None, "None or gn (GroupNorm in the heads)")
    backbone_weights: Optional[str] = _opt(None, "pretrained weights for the ResNet: imagenet (torchvision's, "
                                           "downloaded once into the torch hub cache), shapes (pretrained on Shapes "
                                           "crops, made once into that cache: python -m fl_lab.pretrain), pretrained "
                                           "(imagenet if the cache holds it, else shapes; never downloads) or a file "
                                           "(none: from scratch)")
    prior: Optional[float] = _opt(0.01, "the class prior pi of the initialisation (paper: 0.01; None: bias 0)")
    anchor_scales: int = _opt(3, "anchor scales per level, 2^(k/n) for k < n (paper: 3; Table 1c tries 1-4)")
    anchor_ratios: int = _opt(3, "anchor aspect ratios: 1 (1:1) or 3 (1:2, 1:1, 2:1; the paper's)",
                              choices=tuple(ANCHOR_RATIOS))
    # loss
    loss_fn: str = _opt("focal", "focal, ce, balanced_ce, focal_star or ohem (cross-entropy on the hardest anchors)",
                        choices=tuple(LOSS_FUNCTIONS))
    gamma: float = _opt(2.0, "focusing parameter of focal / focal_star (paper: 2)")
    alpha: Optional[float] = _opt(None, "weight of positives; None: the loss's own (the paper's best: focal 0.25, "
                                  "balanced_ce 0.75, focal_star unweighted); ignored by ce and ohem")
    ohem_batch: int = _opt(128, "ohem: anchors per image kept after NMS, highest loss first (paper Table 1d: 128, 256)")
    ohem_nms: float = _opt(0.5, "ohem: IoU threshold of the NMS over anchors' predicted boxes (paper: 0.5, 0.7)")
    ohem_max_pos_fraction: Optional[float] = _opt(None, "ohem: at most this share of positives (0.25 = SSD's 1:3; "
                                                  "None: no cap)")
    box_loss: str = _opt("l1", "l1 (torchvision, detectron2) or smooth_l1 (paper)", choices=BOX_LOSSES)
    normalize: str = _opt("batch", "loss normaliser: batch (paper), per_image (torchvision), ema (detectron2)",
                          choices=NORMALIZE)
    cls_weight: float = _opt(1.0, "weight of the classification loss in the total (paper: 1)")
    # optimisation
    steps: int = _opt(1000, "training iterations")
    batch_size: int = _opt(8, "images per iteration, over all processes (paper: 16)")
    lr: float = _opt(0.01, "base learning rate (paper: 0.01 at batch 16)")
    warmup: int = _opt(100, "iterations of linear warm-up from lr/3")
    momentum: float = _opt(0.9, "SGD momentum (paper: 0.9)")
    weight_decay: float = _opt(1e-4, "weight decay (paper: 1e-4)")
    amp: str = _opt("none", "mixed precision: none, bf16 or fp16 (fp16 adds a gradient scaler)",
                    choices=("none", "bf16", "fp16"))
    # run
    seed: int = _opt(0, "seed of the weights, the data order and the flips")
    device: str = _opt("auto", "auto (CUDA if present), cpu, cuda or cuda:N")
    workers: int = _opt(2, "DataLoader worker processes")
    out: str = _opt("runs/default", "run folder: config, log, checkpoint, metrics")
    checkpoint_every: int = _opt(500, "write last.pt every N iterations, and always at the end (0: only at the end)")
    log_every: int = _opt(10, "append to log.jsonl every N iterations")
    stop_after: Optional[int] = _opt(None, "stop (with a checkpoint) after this many iterations; --resume continues")
    evaluate: bool = _opt(True, "evaluate AP on the validation set at the end")

    @classmethod
    def from_json(cls, saved, source: str) -> "Config":
        """The configuration a run saved (``saved``: what ``dataclasses.asdict`` gave, read from ``source``).

        The one reader of a saved configuration: a field the kit gained since the run was made
        takes its default (the run was made with that behaviour); a field this kit does not know,
        or anything but a JSON object, is a ``ValueError`` naming ``source``.
        """
        if not isinstance(saved, dict):
            raise ValueError(f"{source} holds no configuration (a JSON object is expected)")
        unknown = sorted(set(saved) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{source} has settings this fl_lab does not know, {unknown} "
                             "(written by another version?)")
        return cls(**saved)

    def check(self) -> "Config":
        """Raise ``ValueError`` naming the option (``--steps …``) of the first setting out of range; else self.

        Syntax only for ``device`` (whether CUDA is there is checked when a run starts).
        """
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {getattr(self, name)!r}")

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= low, name, f"an integer >= {low}")

        def number(name: str, ok) -> bool:
            value = getattr(self, name)
            return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and ok(value))

        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices is not None:
                need(getattr(self, f.name) in choices, f.name, f"one of {', '.join(map(str, choices))}")
        for name in ("steps", "batch_size", "train_images", "log_every", "fpn_channels", "ohem_batch", "anchor_scales"):
            integer(name, 1)
        for name in ("warmup", "workers", "checkpoint_every", "head_convs", "min_objects", "seed", "max_objects"):
            integer(name, 0)
        integer("image_size", 32)
        if self.input_size is not None:
            integer("input_size", 32)
        integer("val_images", 1 if self.evaluate else 0)
        need(self.max_objects >= self.min_objects, "max_objects", f"at least --min-objects ({self.min_objects})")
        if self.dataset == "shapes":
            integer("num_classes", 1)
            need(self.num_classes <= 9, "num_classes", "at most 9 (Shapes has 9 shapes)")
        need(self.stop_after is None or (isinstance(self.stop_after, int) and self.stop_after >= 1), "stop_after",
             "an integer >= 1 or none")
        need(self.head_norm in HEAD_NORMS, "head_norm", " or ".join(str(n).lower() for n in HEAD_NORMS))
        need(number("lr", lambda v: v > 0), "lr", "a positive number")
        need(number("momentum", lambda v: 0 <= v < 1), "momentum", "in [0, 1)")
        need(number("weight_decay", lambda v: v >= 0), "weight_decay", "a number >= 0")
        need(number("cls_weight", lambda v: v > 0), "cls_weight", "a positive number")
        need(number("gamma", lambda v: v >= 0), "gamma", "a number >= 0")
        need(number("empty_fraction", lambda v: 0 <= v <= 1), "empty_fraction", "in [0, 1]")
        need(number("min_object_size", lambda v: v > 0), "min_object_size", "a positive number")
        need(self.max_object_size is None or number("max_object_size", lambda v: v >= self.min_object_size),
             "max_object_size", f"none or at least --min-object-size ({self.min_object_size})")
        need(number("ohem_nms", lambda v: 0 < v <= 1), "ohem_nms", "in (0, 1] (an IoU)")
        need(self.alpha is None or number("alpha", lambda v: 0 <= v <= 1), "alpha", "none or in [0, 1]")
        need(self.prior is None or number("prior", lambda v: 0 < v < 1), "prior", "none or in (0, 1)")
        need(self.ohem_max_pos_fraction is None or number("ohem_max_pos_fraction", lambda v: 0 < v <= 1),
             "ohem_max_pos_fraction", "none or in (0, 1]")
        need(isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             "device", "auto, cpu, cuda or cuda:N")
        return self

    def loss_kwargs(self) -> dict:
        """Arguments of :meth:`RetinaNet.loss` for this configuration: the named loss of
        :data:`fl_lab.detection_loss.LOSS_FUNCTIONS` with this configuration's parameters."""
        alpha = {} if self.alpha is None else {"alpha": self.alpha}
        params = {
            "focal": dict(gamma=self.gamma, **alpha),
            "ce": {},
            "balanced_ce": alpha,
            "focal_star": dict(gamma=self.gamma, **alpha),
            "ohem": dict(batch_size=self.ohem_batch, nms_thresh=self.ohem_nms,
                         max_pos_fraction=self.ohem_max_pos_fraction),
        }[self.loss_fn]
        # check_values=False: the training loop checks for non-finite values itself, at its log steps,
        # instead of the loss reading its inputs back to the host at every step (see RetinaNet.loss).
        fn = partial(LOSS_FUNCTIONS[self.loss_fn], **params, check_values=False)
        return {"loss_fn": fn, "box_loss": self.box_loss, "normalize": self.normalize, "cls_weight": self.cls_weight}

    def train_settings(self) -> TrainSettings:
        """What :func:`fl_lab.train.loop.train` needs of this configuration."""
        return TrainSettings(steps=self.steps, lr=self.lr, warmup=self.warmup, momentum=self.momentum,
                             weight_decay=self.weight_decay, amp=self.amp, loss_kwargs=self.loss_kwargs(),
                             log_every=self.log_every, checkpoint_every=self.checkpoint_every,
                             stop_after=self.stop_after)


# Shapes at 128 px, one object of 32-96 px per image (every object has an anchor with IoU >= 0.5;
# ~90 negative anchors per positive), a small ResNet-18-FPN with GroupNorm heads, 500 iterations.
# detectron2's running-average normaliser: the study's sparser data has batches without objects.
_CPU = dict(image_size=128, train_images=4000, val_images=200, min_objects=1, max_objects=1, min_object_size=32.0,
            backbone="resnet18", fpn_channels=64, head_convs=2, head_norm="gn", batch_size=8, steps=500, lr=0.02,
            warmup=50, normalize="ema", workers=1, checkpoint_every=100)

#: Named starting points; any field can still be overridden on the command line.
PRESETS: dict[str, dict] = {
    # The lesson regime (lessons 04-07): fine-tuned from a ResNet-18 pretrained on Shapes crops, as the
    # paper fine-tunes from ImageNet (§4.1; BatchNorm frozen, as in the paper's Detectron). The weights
    # are made once into the torch hub cache (fl_lab.pretrain; results/pretrain has the times). lr 0.01:
    # what FL and α-CE each chose in the α × lr search of results/confirm (0.02 cost FL 0.9 AP there).
    "cpu-pretrained": dict(_CPU, backbone_weights="shapes", lr=0.01, out="runs/cpu-pretrained"),
    # The same from scratch: lesson 06's from-scratch study; tests and fast modes (nothing to pretrain).
    "cpu-fast": dict(_CPU, out="runs/cpu-fast"),
    # Shapes at 512 px, ResNet-50-FPN, batch 16, bf16, fine-tuned as the lessons are: from ImageNet
    # weights when the torch hub cache holds them, else from a ResNet-50 pretrained on Shapes crops
    # (made on the machine first; seconds on a GPU).
    "gpu": dict(image_size=512, train_images=16000, val_images=500, min_object_size=32.0, backbone="resnet50",
                backbone_weights="pretrained", fpn_channels=256, head_convs=4, batch_size=16, steps=3000, lr=0.01,
                warmup=300, amp="bf16", workers=12, checkpoint_every=500, log_every=20, out="runs/gpu"),
    # The paper's recipe on COCO 2017 (train2017 / val2017): 90k iterations at batch 16, fine-tuning
    # an ImageNet-pretrained ResNet-50 (fetched once into the torch hub cache).
    "coco": dict(dataset="coco", data_root="data/coco", image_size=800, max_size=1333, backbone="resnet50",
                 backbone_weights="imagenet",
                 fpn_channels=256, head_convs=4, batch_size=16, steps=90_000, lr=0.01, warmup=500, amp="bf16",
                 workers=8, checkpoint_every=5000, log_every=20, out="runs/coco"),
}


#: What the lessons train under ``FL_LAB_FAST`` (CI's run of every notebook): the same code, cut short.
FAST_LESSON = dict(steps=50, warmup=5, val_images=32)


def lesson_config(preset: str, **overrides) -> Config:
    """The run a lesson trains: ``PRESETS[preset]`` updated by ``overrides``. Under ``FL_LAB_FAST``
    it is ``cpu-pretrained`` cut to :data:`FAST_LESSON`, whatever ``preset`` is, so that a lesson's
    code runs in CI unchanged."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if fast_mode():
        return Config(**{**PRESETS["cpu-pretrained"], **overrides, **FAST_LESSON})
    return Config(**{**PRESETS[preset], **overrides})
