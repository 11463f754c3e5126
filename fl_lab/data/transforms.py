"""Image loading, the paper's training transforms, and batching.

A transform is a callable ``(image, target) -> (image, target)``: ``image`` a float (3, H, W)
tensor in [0, 1], ``target`` a dict holding at least ``boxes`` (G, 4) x1, y1, x2, y2 in the
image's pixels. Transforms never modify their inputs in place (datasets may cache targets).
RetinaNet trains with resizing and horizontal flips only (paper §4.1).

Batching: ``DataLoader(dataset, batch_size=B, collate_fn=collate)`` gives a :class:`Batch`.
For another padding multiple pass ``functools.partial(collate, size_divisible=128)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.functional import convert_image_dtype

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Batch", "Compose", "RandomHorizontalFlip", "Resize",
    "collate", "normalize", "read_image",
]  # fmt: skip

# torchvision's ImageNet statistics, which its pretrained ResNets expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Target = dict
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


def read_image(path: Union[str, Path], size: Optional[tuple[int, int]] = None) -> Tensor:
    """Decode an image file as RGB -> float32 (3, H, W) in [0, 1].

    ``size`` (H, W), when given, is what the annotations claim; a mismatch raises ValueError
    (boxes drawn on another version of the image would silently be wrong).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of torchcodec, which the kit
            # does not need; the call itself is unchanged and works.
            warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
            image = decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise ValueError(f"cannot decode image {path}: {err}") from None
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        raise ValueError(f"{path} is {tuple(image.shape[-2:])} (H, W) but its annotation says {tuple(size)}")
    return convert_image_dtype(image, torch.float32)


def _check(image: Tensor, target: Target) -> None:
    """Raise ValueError unless image is a float (3, H, W) tensor and target["boxes"] is (G, 4)."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a float tensor of shape (3, H, W), got {got}")
    if min(image.shape[1:]) < 1:
        raise ValueError(f"image must have H, W >= 1, got {tuple(image.shape)}")
    boxes = target.get("boxes") if isinstance(target, dict) else None
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"target must be a dict whose 'boxes' is a (G, 4) tensor, got {got}")


class Resize:
    """Scale so the short side is ``min_size``, unless the long side would then exceed
    ``max_size``, in which case the long side is ``max_size`` (the paper's and detectron2's rule).

    Output sides are rounded half up; boxes are scaled by the *actual* ratios sy = H'/H,
    sx = W'/W. Bilinear, antialiased when shrinking. The target gains ``orig_size`` (H, W) of
    the first image seen and ``scale`` (sy, sx) accumulated over every Resize, so detections
    map back to the original pixels as ``boxes / [sx, sy, sx, sy]``.
    """

    def __init__(self, min_size: int = 800, max_size: int = 1333):
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') for an (H, W) image."""
        scale = self.min_size / min(height, width)
        if max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        _check(image, target)
        height, width = image.shape[-2:]
        new_h, new_w = self.output_size(height, width)
        if (new_h, new_w) != (height, width):
            shrink = new_h < height or new_w < width  # a low-pass filter matters only when shrinking
            image = F.interpolate(image[None], (new_h, new_w), mode="bilinear", antialias=shrink)[0]
        sy, sx = new_h / height, new_w / width
        boxes = target["boxes"] * target["boxes"].new_tensor([sx, sy, sx, sy])
        old_sy, old_sx = target.get("scale", (1.0, 1.0))
        target = {**target, "boxes": boxes, "scale": (old_sy * sy, old_sx * sx)}
        target.setdefault("orig_size", (height, width))
        return image, target

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_size}, max_size={self.max_size})"


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror the image (3, H, W) and its boxes: x1' = W - x2, x2' = W - x1 (the paper's only augmentation)."""
    _check(image, target)
    width = image.shape[-1]
    x1, y1, x2, y2 = target["boxes"].unbind(-1)
    return image.flip(-1), {**target, "boxes": torch.stack((width - x2, y1, width - x1, y2), dim=-1)}


class RandomHorizontalFlip:
    """With probability ``p`` mirror the image and its boxes: x1' = W - x2, x2' = W - x1.

    ``generator`` makes the coin flips reproducible in one process; leave it None under a
    multi-worker DataLoader (each worker would get a copy of it and flip the same images).
    """

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        _check(image, target)
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        return hflip(image, target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def normalize(images: Tensor) -> Tensor:
    """(..., 3, H, W) in [0, 1] -> (images - IMAGENET_MEAN) / IMAGENET_STD per channel."""
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"normalize needs images of shape (..., 3, H, W), got {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return (images - mean) / std


@dataclass
class Batch:
    """A padded batch.

    images: (B, 3, H, W) float32, ImageNet-normalised, zero-padded at the bottom and right;
    targets: one dict per image (boxes in the unpadded image's pixels, which padding keeps);
    image_sizes: the unpadded (H, W) of each image.
    """

    images: Tensor
    targets: list[dict]
    image_sizes: list[tuple[int, int]]

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        """A copy with the images and every tensor in the targets on ``device``."""
        targets = [
            {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in self.targets
        ]
        return Batch(self.images.to(device, non_blocking=non_blocking), targets, list(self.image_sizes))


def collate(batch: Sequence[tuple[Tensor, Target]], size_divisible: int = 32) -> Batch:
    """Normalise, then pad to a common (H, W), each a multiple of ``size_divisible``.

    32 is C5's stride (detectron2's FPN pads to it): C3, C4 and C5 then halve exactly, as FPN's
    top-down merge needs, and P6, P7 follow by ceil (:meth:`AnchorGenerator.feature_sizes`).
    Padding further (to P7's 128) would add anchors on the padding, every one an easy negative: a
    160 px image padded to 256 would carry 2.6 times its anchors, and the imbalance an experiment
    sets through the image size would not be the one it trains with.
    """
    if len(batch) == 0 or size_divisible < 1:
        raise ValueError(f"collate needs a non-empty batch and size_divisible >= 1, got {len(batch)}, {size_divisible}")
    for image, target in batch:
        _check(image, target)
    sizes = [(int(image.shape[1]), int(image.shape[2])) for image, _ in batch]
    height = math.ceil(max(h for h, _ in sizes) / size_divisible) * size_divisible
    width = math.ceil(max(w for _, w in sizes) / size_divisible) * size_divisible
    images = batch[0][0].new_zeros((len(batch), 3, height, width), dtype=torch.float32)
    for i, (image, _) in enumerate(batch):  # one copy per image: sizes differ
        images[i, :, : sizes[i][0], : sizes[i][1]] = normalize(image.float())
    return Batch(images, [target for _, target in batch], sizes)
