"""A classification-pretrained backbone, made offline from Shapes crops (the paper's ImageNet step).

The paper never trains RetinaNet from scratch: its ResNet is pretrained on ImageNet
classification and fine-tuned (§4.1), with BatchNorm frozen. The kit cannot download
ImageNet weights here, but it can make the same *kind* of backbone in a minute or two: a ResNet
trained to name the one shape in a small Shapes image (a crop around an object, as ImageNet
photos are). :func:`pretrain_backbone` writes its weights in torchvision's key format, so
``Config(backbone_weights=path)`` — or ``--backbone-weights path`` — fine-tunes from them
exactly as it would from ImageNet's (frozen BatchNorm, stem and first stage fixed).

One label per image teaches slowly: trained only to name the crop's shape, a ResNet-18's loss
stays at chance (ln 5 ≈ 1.6) for its first ~350 iterations. The recipe therefore also labels
every *cell* of the feature maps C3, C4 and C5 (strides 8, 16, 32 — the maps the detector's FPN
reads) with the shape whose box covers the cell's centre, or "none", and trains a 1×1
classifier on each (``dense_weight``): 84 labels per 64 px crop instead of one. The cell
classifiers are thrown away afterwards, like the classifier ``fc``.

``Config(backbone_weights="shapes")`` — the ``cpu-pretrained`` preset, the lessons' regime —
asks for them by name: :func:`shapes_weights` keeps one file per backbone and recipe in the
torch hub cache (where ``"imagenet"`` weights go too) and makes it the first time, like a download.

    python -m fl_lab.pretrain                                       # into the cache (resnet18)
    python -m fl_lab.pretrain --out runs/pretrain/resnet18_shapes.pt   # a file of your own

Measured times and accuracies are in ``results/pretrain/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import Shapes
from .data.transforms import normalize
from .model import BACKBONES
from .torch_utils import eval_mode, resolve_device

__all__ = ["EARLIER_RECIPE", "RECIPE", "ShapesClassifier", "cell_labels", "crops", "pretrain_backbone",
           "shapes_weights", "shapes_weights_path"]

#: The default recipe of :func:`pretrain_backbone`: what ``backbone_weights="shapes"`` fine-tunes from.
RECIPE = dict(steps=300, batch_size=32, image_size=64, num_classes=5, lr=2e-3, dense_weight=3.0, seed=0)
#: The recipe the kit used before the cell labels: the crop's label alone, 1500 iterations. The
#: committed studies of results/fl_vs_ce, table1_cpu/earlier_backbone and compare_cpu fine-tuned from it.
EARLIER_RECIPE = dict(RECIPE, steps=1500, lr=1e-3, dense_weight=0.0)
CELL_STRIDES = (8, 16, 32)  # C3, C4, C5: the ResNet stages the FPN reads (§3)


def crops(num_images: int, image_size: int = 64, num_classes: int = 5, seed: int = 0) -> Shapes:
    """Shapes images holding one object each, filling a quarter to three quarters of the side:
    a classification set whose label is that object's class (the objects' relative size is
    that of the lesson regime's 32-96 px objects on 128 px images)."""
    return Shapes(num_images, image_size=image_size, num_classes=num_classes, min_objects=1, max_objects=1,
                  min_size=image_size / 4, max_size=0.75 * image_size, seed=seed)


def cell_labels(boxes: Tensor, labels: Tensor, image_size: int, stride: int, background: int) -> Tensor:
    """The class of each ``stride`` × ``stride`` cell of a square image: that of the smallest box
    holding the cell's centre, else ``background``.

    boxes: (G, 4) x1 y1 x2 y2 in pixels; labels: (G,). Returns (S, S) int64, S = image_size // stride.
    """
    centres = (torch.arange(image_size // stride, dtype=torch.float32) + 0.5) * stride
    cy, cx = centres.view(-1, 1, 1), centres.view(1, -1, 1)
    inside = (cx >= boxes[:, 0]) & (cx < boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy < boxes[:, 3])  # (S, S, G)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    smallest = torch.where(inside, area, math.inf).argmin(-1, keepdim=True) if len(labels) else None
    cells = torch.full(inside.shape[:2], background, dtype=torch.int64)
    if smallest is not None:
        cells = torch.where(inside.any(-1), labels[smallest.squeeze(-1)], cells)
    return cells


class ShapesClassifier(nn.Module):
    """A torchvision ResNet with its image classifier ``fc`` and a 1×1 cell classifier on each of C3-C5.

    ``forward(images (B, 3, H, W))`` -> (image logits (B, K), [cell logits (B, K + 1, H/s, W/s) for
    s in 8, 16, 32]); class K of a cell is "no shape here".
    """

    def __init__(self, backbone: str = "resnet18", num_classes: int = 5):
        super().__init__()
        self.resnet = getattr(torchvision.models, backbone)(weights=None, num_classes=num_classes)
        width = self.resnet.layer1[0].expansion  # 1 for ResNet-18/34, 4 for ResNet-50/101
        self.cells = nn.ModuleList(nn.Conv2d(c * width, num_classes + 1, 1) for c in (128, 256, 512))

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        r = self.resnet
        x = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(images)))))
        c3 = r.layer2(x)
        c4 = r.layer3(c3)
        c5 = r.layer4(c4)
        return r.fc(torch.flatten(r.avgpool(c5), 1)), [
            head(c) for head, c in zip(self.cells, (c3, c4, c5), strict=True)
        ]


def _collate(items: Sequence, num_classes: int) -> tuple[Tensor, Tensor, list[Tensor]]:
    """(images (B, 3, H, W) normalised, labels (B,), [cell labels (B, H/s, W/s) for each stride]);
    an image whose object found no place gets label -1 (and only "none" cells)."""
    images = normalize(torch.stack([image for image, _ in items]))
    labels = torch.tensor([int(t["labels"][0]) if len(t["labels"]) else -1 for _, t in items])
    size = images.shape[-1]
    cells = [torch.stack([cell_labels(t["boxes"], t["labels"], size, s, num_classes) for _, t in items])
             for s in CELL_STRIDES]
    return images, labels, cells


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Shapes, batch_size: int = 100) -> float:
    """Share of the images whose object the classifier (a ResNet, or a :class:`ShapesClassifier`) names."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    right = total = 0
    with eval_mode(model):
        for images, labels, _ in DataLoader(dataset, batch_size=batch_size,
                                            collate_fn=partial(_collate, num_classes=dataset.num_classes)):
            logits = model(images.to(device))
            logits = (logits[0] if isinstance(logits, tuple) else logits).cpu()
            keep = labels >= 0
            right += int((logits.argmax(1) == labels)[keep].sum())
            total += int(keep.sum())
    return right / max(total, 1)


def pretrain_backbone(
    out: Union[str, Path],
    backbone: str = "resnet18",
    steps: int = RECIPE["steps"],
    batch_size: int = RECIPE["batch_size"],
    image_size: int = RECIPE["image_size"],
    num_classes: int = RECIPE["num_classes"],
    lr: float = RECIPE["lr"],
    dense_weight: float = RECIPE["dense_weight"],
    seed: int = RECIPE["seed"],
    workers: int = 1,
    progress: bool = True,
    device: Union[None, str, torch.device] = None,
    held_out: int = 1000,
) -> dict:
    """Train ``backbone`` to classify Shapes crops, save its weights to ``out``, return a summary.

    The loss is the image's cross-entropy plus ``dense_weight`` × the mean cross-entropy of
    the cells of C3, C4 and C5 (0: the image label alone). AdamW with a linear warm-up over
    the first 5 % and a cosine decay; BatchNorm trains (it is frozen later, when the detector
    fine-tunes). Only the ResNet is saved, in torchvision's key format (``fc`` included, and
    ignored on loading). The summary (the recipe, seconds, held-out accuracy on ``held_out`` crops
    of another seed) is also written next to the weights as ``<out>.json``. ``device``: default
    CUDA when there is one, else the CPU.
    """
    if not (steps >= 1 and batch_size >= 1 and lr > 0 and dense_weight >= 0):
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0 and dense_weight >= 0, got {steps}, "
                         f"{batch_size}, {lr}, {dense_weight}")
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (C5's stride), got {image_size}")
    out = Path(out)
    device = resolve_device(device)
    torch.manual_seed(seed)
    model = ShapesClassifier(backbone, num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    loader = DataLoader(crops(steps * batch_size, image_size, num_classes, seed), batch_size=batch_size,
                        collate_fn=partial(_collate, num_classes=num_classes), num_workers=workers,
                        generator=torch.Generator().manual_seed(seed), shuffle=True)
    start = time.perf_counter()
    model.train()
    bar = tqdm(loader, total=steps, desc="pretrain", disable=not progress, mininterval=2.0)
    for step, (images, labels, cells) in enumerate(bar):
        images, labels, cells = images.to(device), labels.to(device), [c.to(device) for c in cells]
        logits, cell_logits = model(images)
        loss = F.cross_entropy(logits, labels, ignore_index=-1)
        if dense_weight:
            loss = loss + dense_weight * sum(F.cross_entropy(c, t) for c, t in zip(cell_logits, cells, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress and step % 10 == 0:  # reading the loss waits for the step: not on every one
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    summary = {"backbone": backbone, "steps": steps, "batch_size": batch_size, "image_size": image_size,
               "num_classes": num_classes, "lr": lr, "dense_weight": dense_weight, "seed": seed,
               "seconds": seconds,
               "held_out_accuracy": accuracy(model, crops(held_out, image_size, num_classes, seed + 10_000))}
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name, then renamed: a reader (or another process of a torchrun job
    # making the same file) never sees half a file.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    torch.save({k: v.cpu() for k, v in model.resnet.state_dict().items()}, tmp)
    tmp.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    os.replace(tmp.with_suffix(".json"), out.with_suffix(out.suffix + ".json"))
    os.replace(tmp, out)
    return summary


def shapes_weights_path(backbone: str = "resnet18", **recipe) -> Path:
    """Where :func:`shapes_weights` keeps ``backbone``'s Shapes-pretrained weights: the torch hub
    cache (``$TORCH_HOME``), beside torchvision's ImageNet files. The name ends in a hash of the
    recipe (:data:`RECIPE`, updated by ``recipe``), so a file made by another recipe is never
    taken for this one."""
    unknown = set(recipe) - set(RECIPE)
    if unknown:
        raise ValueError(f"unknown recipe settings {sorted(unknown)}; the recipe has {sorted(RECIPE)}")
    # Each setting in its default's type, so that dense_weight=3 and 3.0 name the same file.
    recipe = {k: type(v)(recipe.get(k, v)) for k, v in RECIPE.items()}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    return Path(torch.hub.get_dir()) / "checkpoints" / f"fl_lab_{backbone}_shapes-{digest}.pt"


def shapes_weights(backbone: str = "resnet18", progress: bool = True, device: Union[None, str, torch.device] = None,
                   **recipe) -> Path:
    """The weights file ``Config(backbone_weights="shapes")`` fine-tunes from: ``backbone``
    pretrained on Shapes crops with :data:`RECIPE` (updated by ``recipe``), made now if the torch
    hub cache does not hold it yet, like a download; its summary is ``<file>.json``."""
    path = shapes_weights_path(backbone, **recipe)
    if not path.is_file():
        if progress:
            print(f"pretraining {backbone} on Shapes crops (python -m fl_lab.pretrain), into {path}")
        pretrain_backbone(path, backbone, progress=progress, device=device, **{**RECIPE, **recipe})
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="weights file to write (default: the torch hub cache's "
                        "fl_lab_<backbone>_shapes-<recipe hash>.pt, which backbone_weights='shapes' reads for the "
                        "default recipe)")
    parser.add_argument("--backbone", default="resnet18", choices=tuple(BACKBONES))
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="iterations of --batch-size crops")
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    parser.add_argument("--image-size", type=int, default=RECIPE["image_size"], help="crop side, a multiple of 32")
    parser.add_argument("--lr", type=float, default=RECIPE["lr"], help="AdamW's peak learning rate")
    parser.add_argument("--dense-weight", type=float, default=RECIPE["dense_weight"],
                        help="weight of the C3-C5 cell labels' loss (0: the image label alone)")
    parser.add_argument("--seed", type=int, default=RECIPE["seed"])
    args = parser.parse_args(argv)
    recipe = {k: getattr(args, k) for k in ("steps", "batch_size", "image_size", "lr", "dense_weight", "seed")}
    out = args.out or shapes_weights_path(args.backbone, **recipe)
    try:
        summary = pretrain_backbone(out, args.backbone, **recipe)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
