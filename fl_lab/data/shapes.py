"""Shapes: fl_lab's built-in detection dataset, drawn on the fly (no files, no download).

Each image holds 1-30 filled shapes of K classes (circle, square, triangle, …) over a
textured background (colour gradient, soft blobs, stripes, noise) with unlabelled clutter
(lines, arcs, noise patches): many easy negatives and some hard ones, the imbalance focal
loss is about.

Object sizes fit the paper's anchors. The smallest anchor is 32 px on a stride-8 grid
(P3, §4), so an object much smaller than 32 px has no anchor with IoU ≥ 0.5: the paper's
rule would give it no foreground anchor and, below 0.4, train every anchor on it as
*background* — a labelled object taught as a hard negative, exactly the examples the focal
loss up-weights. Sides therefore start at :data:`MIN_MATCHABLE_SIZE` (32 px): on 8,000
objects every one has an anchor with IoU ≥ 0.6 (tests/test_shapes.py checks ≥ 0.5). The
anchors stay the paper's; the data is what changes. Sides run log-uniform up to 3/4 of the
image.

Sparsity — the negative : positive imbalance — is set by the canvas and the objects per
image: ``image_size``, ``min_objects`` / ``max_objects`` and ``empty_fraction`` (the share of
images with no object at all). At 128 px, 1-10 objects give ~16 background anchors per
foreground anchor, one object ~90, one object in one image of six ~550 (the paper's COCO:
~1000); :func:`fl_lab.analysis.anchor_coverage` measures it.

Item ``i`` comes from its own ``torch.Generator`` seeded from ``(seed, i)``: any item can
be drawn alone, in any order or DataLoader worker, and is always the same. Boxes are read
off each shape's rasterised mask (pixels at least half covered, before anything is drawn on
top), so a box is tight around what is drawn. Occlusion rule: a placement that would hide
more than half of an earlier object is resampled (up to ``MAX_TRIES`` times, then that one
object is left out), so every labelled object stays at least half visible.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torchvision
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["MIN_MATCHABLE_SIZE", "SHAPES", "Shapes"]

MAX_TRIES = 20  # placements tried per object before it is left out
MAX_ROTATION = math.radians(15)  # small enough that a square never looks like a diamond
MAX_ASPECT = 2.0  # stretchable shapes get width / height in [1/2, 2]
MIN_CONTRAST = 0.4  # RGB distance between an object's colour and the mean background under it
MIN_MATCHABLE_SIZE = 32.0  # the smallest anchor (P3, §4): smaller objects lose their foreground anchors


# Signed distance (negative inside) of each shape in its own frame: u, v are pixel offsets
# from the centre divided by the half width / half height, so each shape fills about
# [-1, 1]^2. Distances are exact for some shapes and only sign-correct for others; they
# are only used for the inside test and ~1 px anti-aliasing.
def _circle(u: Tensor, v: Tensor) -> Tensor:
    return torch.hypot(u, v) - 1


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) - 1


def _triangle(u: Tensor, v: Tensor) -> Tensor:  # apex up, base at v = 1
    return torch.maximum(v - 1, (2 * u.abs() - v - 1) / math.sqrt(5))


def _ring(u: Tensor, v: Tensor) -> Tensor:  # outer radius 1, inner 0.45
    return (torch.hypot(u, v) - 0.725).abs() - 0.275


def _cross(u: Tensor, v: Tensor) -> Tensor:  # a plus sign, arms 0.3 wide
    a, b = u.abs(), v.abs()
    return torch.minimum(torch.maximum(a - 0.3, b - 1), torch.maximum(a - 1, b - 0.3))


# A five-pointed star's edge, folded into one half tip: from the tip (1, 0) to the inner
# corner 0.45 (cos 36°, sin 36°); (_STAR_NX, _STAR_NY) is its unit normal pointing outwards.
_STAR_NORMAL = math.atan2(1 - 0.45 * math.cos(math.pi / 5), 0.45 * math.sin(math.pi / 5))
_STAR_NX, _STAR_NY = math.cos(_STAR_NORMAL), math.sin(_STAR_NORMAL)


def _star(u: Tensor, v: Tensor) -> Tensor:  # five points, one up
    phi = torch.remainder(torch.atan2(u, -v), 2 * math.pi / 5)  # angle from the nearest tip clockwise
    phi = torch.minimum(phi, 2 * math.pi / 5 - phi)  # each tip is symmetric
    rho = torch.hypot(u, v)
    return (rho * torch.cos(phi) - 1) * _STAR_NX + rho * torch.sin(phi) * _STAR_NY


def _diamond(u: Tensor, v: Tensor) -> Tensor:
    return (u.abs() + v.abs() - 1) / math.sqrt(2)


def _hexagon(u: Tensor, v: Tensor) -> Tensor:  # corners at (±1, 0)
    return torch.maximum(v.abs(), u.abs() * math.sqrt(3) / 2 + v.abs() / 2) - math.sqrt(3) / 2


def _crescent(u: Tensor, v: Tensor) -> Tensor:  # a disc minus a disc shifted right
    return torch.maximum(torch.hypot(u, v) - 1, 0.85 - torch.hypot(u - 0.55, v))


# name -> (signed distance, may be stretched). A stretched circle would be an ellipse, a
# stretched square a rectangle: those keep aspect ratio 1. Adding a class is one function here.
SHAPES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], bool]] = {
    "circle": (_circle, False),
    "square": (_square, False),
    "triangle": (_triangle, True),
    "ring": (_ring, False),
    "cross": (_cross, True),
    "star": (_star, False),
    "diamond": (_diamond, True),
    "hexagon": (_hexagon, False),
    "crescent": (_crescent, True),
}


def _window(cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> tuple[slice, slice, Tensor, Tensor]:
    """The rows and columns of the pixels within (rx, ry) of (cx, cy), clipped to the image,
    and their centres' offsets from (cx, cy): dy (h, 1), dx (1, w)."""
    y0, y1 = max(0, math.floor(cy - ry)), min(height, math.ceil(cy + ry) + 1)
    x0, x1 = max(0, math.floor(cx - rx)), min(width, math.ceil(cx + rx) + 1)
    dy = (torch.arange(y1 - y0, dtype=torch.float32) + (y0 + 0.5 - cy)).unsqueeze(1)
    dx = (torch.arange(x1 - x0, dtype=torch.float32) + (x0 + 0.5 - cx)).unsqueeze(0)
    return slice(y0, y1), slice(x0, x1), dy, dx


def _paint(image: Tensor, rows: slice, cols: slice, coverage: Tensor, colour: Tensor) -> None:
    """Alpha-composite ``colour`` (3,) over ``image`` (3, H, W) in place, with coverage (h, w) in [0, 1]."""
    patch = image[:, rows, cols]
    patch.lerp_(colour.view(3, 1, 1).expand_as(patch), coverage)


def _contrasting_colour(g: torch.Generator, patch: Tensor, mask: Tensor, area: int) -> Tensor:
    """A random colour (3,) at least MIN_CONTRAST from the mean of ``patch`` (3, h, w) under ``mask`` (h, w).

    The first of 8 random candidates that is far enough, else the farthest: deterministic and
    cheap, and an object never melts into what lies under it.
    """
    candidates = torch.rand(8, 3, generator=g)
    contrast = (candidates - (patch * mask).sum((1, 2)) / area).norm(dim=1)
    far = torch.nonzero(contrast >= MIN_CONTRAST)
    return candidates[int(far[0]) if len(far) else int(contrast.argmax())]


def _background(g: torch.Generator, height: int, width: int) -> Tensor:
    """(3, H, W) in [0, 1]: a linear colour gradient, four soft blobs, faint stripes and pixel noise."""
    r = torch.rand(8, generator=g).tolist()
    colours, blob_colours = torch.rand(2, 3, generator=g), torch.rand(4, 3, generator=g) - 0.5
    blobs = torch.rand(4, 3, generator=g)  # centre x, centre y, width (fractions of the image side)
    side = max(height, width)
    y = (torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5) / side
    x = (torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5) / side
    angle = 2 * math.pi * r[0]
    ramp = x * math.cos(angle) + y * math.sin(angle)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min()).clamp(min=1e-6)
    image = colours[0].view(3, 1, 1) + ramp * (colours[1] - colours[0]).view(3, 1, 1)
    # Gaussian blobs are separable: exp(-(dx² + dy²) / 2σ²) = exp(-dx² / 2σ²) exp(-dy² / 2σ²).
    scale = -0.5 / (0.05 + 0.25 * blobs[:, 2:]) ** 2  # (4, 1)
    bump_x, bump_y = torch.exp(scale * (x - blobs[:, :1]) ** 2), torch.exp(scale * (y.T - blobs[:, 1:2]) ** 2)
    image += torch.einsum("kc,kh,kw->chw", 0.6 * blob_colours, bump_y, bump_x)
    period = (6 + 40 * r[1]) / side  # stripes 6-46 px apart, at most 0.12 strong
    phase = (x * math.cos(2 * math.pi * r[2]) + y * math.sin(2 * math.pi * r[2])) * (2 * math.pi / period)
    image += 0.12 * r[3] * torch.sin(phase + 2 * math.pi * r[4])
    image += 0.08 * r[5] * (torch.rand(3, height, width, generator=g) - 0.5)
    return image.clamp_(0, 1)


def _distractor(g: torch.Generator, image: Tensor) -> None:
    """Draw one unlabelled line, arc or noise patch on ``image`` (3, H, W) in place."""
    _, height, width = image.shape
    kind = int(torch.randint(3, (1,), generator=g))
    r = torch.rand(6, generator=g).tolist()
    colour = torch.rand(3, generator=g)
    cx, cy, side = r[0] * width, r[1] * height, min(height, width)
    if kind == 2:  # a square patch of noise, 4-24 px
        rows, cols, dy, dx = _window(cx, cy, 2 + 10 * r[2], 2 + 10 * r[2], height, width)
        noise = torch.rand(3, dy.shape[0], dx.shape[1], generator=g)
        image[:, rows, cols] = noise if r[3] < 0.5 else 0.5 * (image[:, rows, cols] + noise)
        return
    thick, angle = 0.5 + 1.5 * r[3], math.pi * 2 * r[4]  # half stroke width 0.5-2 px
    length = (0.05 + 0.3 * r[2]) * side  # half length of a line, radius of an arc
    rows, cols, dy, dx = _window(cx, cy, length + thick + 1, length + thick + 1, height, width)
    if kind == 0:  # a line segment through (cx, cy)
        along = dx * math.cos(angle) + dy * math.sin(angle)
        across = -dx * math.sin(angle) + dy * math.cos(angle)
        dist = torch.hypot((along.abs() - length).clamp(min=0), across) - thick
    else:  # an arc around (cx, cy), 50-230 degrees long: a ring it is not
        off = torch.remainder(torch.atan2(dy, dx) - angle, 2 * math.pi)
        dist = (torch.hypot(dx, dy) - length).abs() - thick
        dist = dist.masked_fill(off > math.radians(50 + 180 * r[5]), math.inf)
    _paint(image, rows, cols, (0.5 - dist).clamp(0, 1), colour)


class Shapes(Dataset):
    """``num_images`` synthetic detection images, drawn when indexed.

    Items are ``(image (3, H, W) float32 in [0, 1], {"boxes": (G, 4) float32 x1 y1 x2 y2,
    "labels": (G,) int64 in [0, num_classes), "image_id": i})``, ``transform`` applied last.

    Args:
        image_size: H = W, or (H, W); at least 32.
        num_classes: the first K shapes of :data:`SHAPES` are the classes.
        seed: the dataset; use different seeds for training and validation sets.
        min_objects, max_objects: an image draws G uniform in this range (one fewer for each
            object that found no placement obeying the occlusion rule: rare).
        empty_fraction: the share of images drawn with no object (background and clutter
            only), the third sparsity knob beside the canvas size and the object counts.
        min_size, max_size: object sides (sqrt of the shape's frame width x height) are
            log-uniform in this range; min_size defaults to :data:`MIN_MATCHABLE_SIZE` (every
            object then has an anchor with IoU ≥ 0.5), max_size to 0.75 x the shorter image side.
        distractors: draw unlabelled lines, arcs and noise patches under the objects.
    """

    def __init__(
        self,
        num_images: int,
        image_size: Union[int, tuple[int, int]] = 256,
        num_classes: int = 5,
        seed: int = 0,
        min_objects: int = 1,
        max_objects: int = 30,
        min_size: float = MIN_MATCHABLE_SIZE,
        max_size: Optional[float] = None,
        distractors: bool = True,
        transform: Optional[Callable[[Tensor, dict], tuple[Tensor, dict]]] = None,
        empty_fraction: float = 0.0,
    ):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or not all(isinstance(s, int) and s >= 32 for s in size):
            raise ValueError(f"image_size must be an int or (H, W) of ints >= 32, got {image_size!r}")
        max_size = 0.75 * min(size) if max_size is None else max_size
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if not 1 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [1, {len(SHAPES)}] (one per shape), got {num_classes}")
        if not 0 <= min_objects <= max_objects:
            raise ValueError(
                f"need 0 <= min_objects <= max_objects, got min_objects={min_objects}, max_objects={max_objects}"
            )
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}"
                             + (" (pass a smaller min_size for so small an image)"
                                if min_size == MIN_MATCHABLE_SIZE else ""))
        if not 0.0 <= empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must lie in [0, 1], got {empty_fraction}")
        self.num_images, self.image_size, self.seed = num_images, size, seed
        self.min_objects, self.max_objects, self.empty_fraction = min_objects, max_objects, float(empty_fraction)
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.distractors, self.transform = distractors, transform
        self.num_classes = num_classes
        self.class_names = list(SHAPES)[:num_classes]
        self.category_ids = list(range(1, num_classes + 1))

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, target, _ = self._generate(index)
        return self.transform(image, target) if self.transform is not None else (image, target)

    def _item_seed(self, index: int) -> int:
        # torch's CPU generator keeps only 32 bits of a seed, so mix (seed, index) into 32
        # bits; the odd multiplier gives every item of one dataset a different seed.
        base = int.from_bytes(hashlib.blake2b(str(self.seed).encode(), digest_size=4).digest(), "little")
        return (base + index * 0x9E3779B1) % 2**32

    def _sample_shape(self, g: torch.Generator, label: int) -> tuple[slice, slice, Tensor, float]:
        """One random placement of class ``label``: the rows and columns of its window, the
        shape's normalised signed distance there (h, w), and the factor that turns it into ~pixels."""
        height, width = self.image_size
        sdf, stretch = SHAPES[self.class_names[label]]
        r = torch.rand(5, generator=g).tolist()
        size = self.min_size * (self.max_size / self.min_size) ** r[0]  # log-uniform
        aspect = MAX_ASPECT ** (2 * r[1] - 1) if stretch else 1.0
        half_w, half_h = min(size * aspect**0.5, width) / 2, min(size / aspect**0.5, height) / 2
        angle = MAX_ROTATION * (2 * r[2] - 1)
        cos, sin = math.cos(angle), math.sin(angle)
        # At most a quarter of the frame's width or height may hang outside the image.
        cx, cy = half_w / 2 + r[3] * (width - half_w), half_h / 2 + r[4] * (height - half_h)
        rx, ry = half_w * cos + half_h * abs(sin) + 1, half_w * abs(sin) + half_h * cos + 1
        rows, cols, dy, dx = _window(cx, cy, rx, ry, height, width)
        # Rotate into the shape's frame, scaling the 1-D offsets before they broadcast to (h, w).
        dist = sdf(dx * (cos / half_w) + dy * (sin / half_w), dy * (cos / half_h) - dx * (sin / half_h))
        return rows, cols, dist, math.sqrt(half_w * half_h)  # geometric-mean half side: ~1 px anti-aliasing

    def _generate(self, index: int, with_masks: bool = False) -> tuple[Tensor, dict, Optional[Tensor]]:
        """Image, target and (only ``with_masks``) each object's full mask (G, H, W) bool, before occlusion."""
        index = int(index)
        index += len(self) if index < 0 else 0
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for Shapes of length {len(self)}")
        g = torch.Generator().manual_seed(self._item_seed(index))
        height, width = self.image_size
        image = _background(g, height, width)
        clutter = int(torch.randint(2, 3 + 10 * height * width // 256**2, (1,), generator=g))  # 2-12 per 256²
        for _ in range(clutter if self.distractors else 0):
            _distractor(g, image)
        owner = torch.zeros(height, width, dtype=torch.int32)  # 1 + index of the topmost object, 0: none
        visible, full = [], []  # pixel counts of each object: still visible, and in its whole mask
        boxes, labels, masks = [], [], []
        count = int(torch.randint(self.min_objects, self.max_objects + 1, (1,), generator=g))
        if self.empty_fraction and float(torch.rand(1, generator=g)) < self.empty_fraction:
            count = 0  # drawn only when asked for, so other datasets keep their random streams
        for _ in range(count):
            label = int(torch.randint(self.num_classes, (1,), generator=g))
            for _ in range(MAX_TRIES):
                rows, cols, dist, pixels = self._sample_shape(g, label)
                mask = dist <= 0  # pixel centre inside: coverage >= 1/2
                area = int(mask.sum())
                under = (owner[rows, cols] * mask).flatten()  # who owns the pixels this would cover
                hidden = torch.bincount(under, minlength=len(boxes) + 1)[1:].tolist()
                if area and all(2 * (v - h) >= f for v, h, f in zip(visible, hidden, full, strict=True)):
                    break
            else:
                continue  # no placement kept the earlier objects half visible: leave this one out
            colour = _contrasting_colour(g, image[:, rows, cols], mask, area)
            _paint(image, rows, cols, (0.5 - dist * pixels).clamp(0, 1), colour)
            owner[rows, cols].masked_fill_(mask, len(boxes) + 1)
            visible = [v - h for v, h in zip(visible, hidden, strict=True)] + [area]
            full.append(area)
            ys, xs = torch.nonzero(mask.any(1))[:, 0].tolist(), torch.nonzero(mask.any(0))[:, 0].tolist()
            boxes.append([cols.start + xs[0], rows.start + ys[0], cols.start + xs[-1] + 1, rows.start + ys[-1] + 1])
            labels.append(label)
            if with_masks:
                masks.append(torch.zeros(height, width, dtype=torch.bool))
                masks[-1][rows, cols] = mask
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": index,
        }
        if not with_masks:
            return image, target, None
        return image, target, torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.bool)

    def _coco(self, targets: list[dict]) -> dict:
        height, width = self.image_size
        annotations = []
        for target in targets:
            for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
                annotations.append({
                    "id": len(annotations) + 1,  # COCOeval treats annotation id 0 as "unmatched"
                    "image_id": target["image_id"],
                    "category_id": self.category_ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),  # box area: the dataset has no segmentations
                    "iscrowd": 0,
                })
        return {
            "images": [
                {"id": i, "file_name": f"{i:06d}.png", "width": width, "height": height} for i in range(len(self))
            ],
            "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids, self.class_names, strict=True)],
        }

    def coco_ground_truth(self) -> dict:
        """The whole dataset's boxes as a COCO-format dict (draws every image: ~ms each)."""
        return self._coco([self._generate(i)[1] for i in range(len(self))])

    def to_coco(self, folder: Union[str, Path]) -> Path:
        """Write ``folder/images/{i:06d}.png`` and ``folder/instances.json``; return the JSON's path."""
        images = Path(folder) / "images"
        images.mkdir(parents=True, exist_ok=True)
        targets = []
        for i in range(len(self)):
            image, target, _ = self._generate(i)
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs; write_png still works
                warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
                torchvision.io.write_png((image * 255).round().to(torch.uint8), str(images / f"{i:06d}.png"))
            targets.append(target)
        path = Path(folder) / "instances.json"
        path.write_text(json.dumps(self._coco(targets)))
        return path
