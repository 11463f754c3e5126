"""A classification-pretrained backbone, made offline from Shapes crops (the paper's ImageNet step).

The paper never trains RetinaNet from scratch: its ResNet is pretrained on ImageNet
classification and fine-tuned (§4.1), with BatchNorm frozen. The kit cannot download
ImageNet weights here, but it can make the same *kind* of backbone in minutes: a ResNet
trained to name the one shape in a small Shapes image (a crop around an object, as ImageNet
photos are). :func:`pretrain_backbone` writes its weights in torchvision's key format, so
``Config(backbone_weights=path)`` — or ``--backbone-weights path`` — fine-tunes from them
exactly as it would from ImageNet's (frozen BatchNorm, stem and first stage fixed).

``Config(backbone_weights="shapes")`` — the ``cpu-pretrained`` preset, the lessons' regime —
asks for them by name: :func:`shapes_weights` keeps one file per backbone in the torch hub
cache (where ``"imagenet"`` weights go too) and makes it the first time, like a download.

    python -m fl_lab.pretrain                                       # into the cache (resnet18)
    python -m fl_lab.pretrain --out runs/pretrain/resnet18_shapes.pt   # the study's file

Measured with the defaults (ResNet-18, 1500 iterations of 32 crops at 64 px, AdamW 1e-3, seed 0;
2 CPU cores): 98.2 % held-out accuracy in 12 minutes. The loss sits at chance (ln 5 ≈ 1.6) for the
first ~350 iterations before it falls, so much shorter runs learn nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import Shapes
from .data.transforms import normalize

__all__ = ["crops", "pretrain_backbone", "shapes_weights", "shapes_weights_path"]


def crops(num_images: int, image_size: int = 64, num_classes: int = 5, seed: int = 0) -> Shapes:
    """Shapes images holding one object each, filling a quarter to three quarters of the side:
    a classification set whose label is that object's class (the objects' relative size is
    that of the lesson regime's 32-96 px objects on 128 px images)."""
    return Shapes(num_images, image_size=image_size, num_classes=num_classes, min_objects=1, max_objects=1,
                  min_size=image_size / 4, max_size=0.75 * image_size, seed=seed)


def _collate(items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, H, W) normalised, labels (B,)); an image whose object found no place gets label -1."""
    images = normalize(torch.stack([image for image, _ in items]))
    labels = torch.tensor([int(t["labels"][0]) if len(t["labels"]) else -1 for _, t in items])
    return images, labels


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset: Shapes, batch_size: int = 100) -> float:
    """Share of the images whose object the classifier names."""
    model.eval()
    right = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, collate_fn=_collate):
        keep = labels >= 0
        right += int((model(images).argmax(1) == labels)[keep].sum())
        total += int(keep.sum())
    return right / max(total, 1)


def pretrain_backbone(
    out: Union[str, Path],
    backbone: str = "resnet18",
    steps: int = 1500,
    batch_size: int = 32,
    image_size: int = 64,
    num_classes: int = 5,
    lr: float = 1e-3,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Train ``backbone`` to classify Shapes crops, save its weights to ``out``, return a summary.

    AdamW with a linear warm-up and a cosine decay; BatchNorm trains (it is frozen later, when
    the detector fine-tunes). The classifier layer ``fc`` is saved too and ignored on loading.
    The summary (steps, seconds, held-out accuracy on 1000 crops of another seed) is also
    written next to the weights as ``<out>.json``.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    out = Path(out)
    torch.manual_seed(seed)
    model = getattr(torchvision.models, backbone)(weights=None, num_classes=num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    loader = DataLoader(crops(steps * batch_size, image_size, num_classes, seed), batch_size=batch_size,
                        collate_fn=_collate, num_workers=workers, generator=torch.Generator().manual_seed(seed),
                        shuffle=True)
    start = time.perf_counter()
    model.train()
    bar = tqdm(loader, total=steps, desc="pretrain", disable=not progress, mininterval=2.0)
    for images, labels in bar:
        loss = F.cross_entropy(model(images), labels, ignore_index=-1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    summary = {"backbone": backbone, "steps": steps, "batch_size": batch_size, "image_size": image_size,
               "num_classes": num_classes, "lr": lr, "seed": seed, "seconds": seconds,
               "held_out_accuracy": accuracy(model, crops(1000, image_size, num_classes, seed + 10_000))}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(summary, indent=2))
    return summary


def shapes_weights_path(backbone: str = "resnet18") -> Path:
    """Where :func:`shapes_weights` keeps ``backbone``'s Shapes-pretrained weights: the torch hub
    cache (``$TORCH_HOME``), beside torchvision's ImageNet files."""
    return Path(torch.hub.get_dir()) / "checkpoints" / f"fl_lab_{backbone}_shapes.pt"


def shapes_weights(backbone: str = "resnet18", progress: bool = True) -> Path:
    """The weights file ``Config(backbone_weights="shapes")`` fine-tunes from: ``backbone``
    pretrained on Shapes crops with :func:`pretrain_backbone`'s defaults, made once (about 12
    minutes for ResNet-18 on two CPU cores) if the cache does not hold it yet."""
    path = shapes_weights_path(backbone)
    if not path.is_file():
        if progress:
            print(f"pretraining {backbone} on Shapes crops once (python -m fl_lab.pretrain), into {path}")
        pretrain_backbone(path, backbone, progress=progress)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fl_lab.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="weights file to write (default: the cache file "
                        "backbone_weights='shapes' reads, fl_lab_<backbone>_shapes.pt in the torch hub cache)")
    parser.add_argument("--backbone", default="resnet18", choices=("resnet18", "resnet34", "resnet50", "resnet101"))
    parser.add_argument("--steps", type=int, default=1500, help="iterations of --batch-size crops")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = pretrain_backbone(args.out or shapes_weights_path(args.backbone), args.backbone, args.steps,
                                    args.batch_size, lr=args.lr, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
