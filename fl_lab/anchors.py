"""The anchor pyramid of RetinaNet (paper §4, "Anchors").

On pyramid levels P3–P7 (strides 8–128) each feature-map cell gets A = 9 anchors: areas
32² … 512² (one per level) times scales {2^0, 2^(1/3), 2^(2/3)}, times aspect ratios
{1:2, 1:1, 2:1}. Together they cover objects of 32–813 px.

Order, everywhere in fl_lab: level → row → column → the A anchors of a location, those
aspect-ratio-major and scale-minor (torchvision's order). An aspect ratio is height / width,
as in torchvision: 0.5 is a wide box.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "level_names"]

_SCALES = (2**0, 2 ** (1 / 3), 2 ** (2 / 3))


class AnchorGenerator:
    """The anchors of every pyramid level for an image size, as (num_anchors, 4) x1, y1, x2, y2.

    Args:
        sizes: base side (√area) per level, one per stride.
        scales: multipliers of the base side, the same on every level.
        aspect_ratios: height / width of the anchors.
        strides: pixel stride of each level; powers of two (P3 = 8 … P7 = 128).
        offset: where in its cell an anchor is centred, as a fraction of the stride:
            0 (torchvision and detectron2: the cell's top-left corner) or 0.5 (its centre).
        integer_sizes, round_cell_anchors: torchvision's quirks (see :meth:`torchvision`).
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        scales: Sequence[float] = _SCALES,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        offset: float = 0.0,
        integer_sizes: bool = False,
        round_cell_anchors: bool = False,
    ):
        for name, values in (("sizes", sizes), ("scales", scales), ("aspect_ratios", aspect_ratios),
                             ("strides", strides)):
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
        if len(sizes) != len(strides):
            raise ValueError(f"need one size per stride, got {len(sizes)} sizes and {len(strides)} strides")
        for name, values in (("sizes", sizes), ("scales", scales), ("aspect_ratios", aspect_ratios)):
            if not all(math.isfinite(v) and v > 0 for v in values):
                raise ValueError(f"{name} must be positive numbers, got {tuple(values)}")
        if not all(isinstance(s, int) and s >= 1 and s & (s - 1) == 0 for s in strides):
            raise ValueError(f"strides must be powers of two (P_l has stride 2^l), got {tuple(strides)}")
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"offset must be in [0, 1), got {offset}")
        self.sizes = tuple(float(s) for s in sizes)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.strides = tuple(strides)
        self.offset = float(offset)
        self.integer_sizes = integer_sizes
        self.round_cell_anchors = round_cell_anchors
        self._cache: dict[tuple, Tensor] = {}

    @classmethod
    def torchvision(cls) -> "AnchorGenerator":
        """torchvision's ``retinanet_resnet50_fpn`` anchors, reproduced exactly.

        torchvision truncates each level's sizes to integers (32, 40, 50; 64, 80, 101; …)
        and rounds the cell anchors to whole pixels. One difference remains: torchvision
        infers each level's stride as ``image_size // grid_size``, which equals the true
        stride only when the image sides are multiples of 128 (at 800 px, P6 and P7 get 61
        and 114 instead of 64 and 128). fl_lab always uses the true strides.
        """
        return cls(integer_sizes=True, round_cell_anchors=True)

    @property
    def num_anchors_per_location(self) -> int:
        """A: anchors per feature-map cell (9 by default)."""
        return len(self.scales) * len(self.aspect_ratios)

    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(rows, columns) of each level's grid for an (H, W) image.

        Each stride-2 step of the backbone (a 7×7/3×3 conv or pool with padding, or P6/P7's
        3×3 stride-2 conv) maps n to ceil(n / 2), so level 2^l has ceil applied l times.
        """
        height, width = _check_image_size(image_size)
        sizes = []
        for stride in self.strides:
            h, w = height, width
            for _ in range(stride.bit_length() - 1):
                h, w = -(-h // 2), -(-w // 2)
            sizes.append((h, w))
        return sizes

    def num_anchors_per_level(self, image_size: tuple[int, int]) -> list[int]:
        """Anchors on each level: rows × columns × A."""
        return [h * w * self.num_anchors_per_location for h, w in self.feature_sizes(image_size)]

    def num_anchors(self, image_size: tuple[int, int]) -> int:
        """All anchors of an (H, W) image: 76,725 at 640×640, 113,193 at 600×1000."""
        return sum(self.num_anchors_per_level(image_size))

    def cell_anchors(self, level: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """(A, 4) anchors of one location of ``level`` (0 = P3), centred on (0, 0).

        Row ``i * len(scales) + j`` has aspect ratio i and scale j; width = side / √ratio and
        height = side × √ratio, so every anchor of a scale has area side².
        """
        if isinstance(level, bool) or not isinstance(level, numbers.Integral) or not 0 <= level < len(self.sizes):
            raise ValueError(f"level must be an integer in 0..{len(self.sizes) - 1} (0 = P3), got {level!r}")
        base = self.sizes[int(level)]
        sides = [base * s for s in self.scales]
        if self.integer_sizes:
            sides = [float(int(s)) for s in sides]
        sides_t = torch.tensor(sides, dtype=torch.float64)
        h_ratio = torch.tensor(self.aspect_ratios, dtype=torch.float64).sqrt()
        w = (sides_t[None, :] / h_ratio[:, None]).reshape(-1)  # aspect-ratio-major
        h = (sides_t[None, :] * h_ratio[:, None]).reshape(-1)
        cell = torch.stack((-w, -h, w, h), dim=1) / 2
        if self.round_cell_anchors:
            # torchvision builds and rounds these in float32; do the same for exact parity.
            cell = cell.float().round()
        return cell.to(dtype=dtype, device=device)

    def gen(self, image_size: tuple[int, int], device=None, dtype: torch.dtype = torch.float32) -> Tensor:
        """All anchors for an (H, W) image: (num_anchors, 4), x1 y1 x2 y2, cached per size and device."""
        image_size = _check_image_size(image_size)
        key = (image_size, str(torch.device(device or "cpu")), dtype)
        if key not in self._cache:
            self._cache[key] = self._generate(image_size).to(device=device, dtype=dtype)
        return self._cache[key]

    def _generate(self, image_size: tuple[int, int]) -> Tensor:
        levels = []
        for level, ((rows, cols), stride) in enumerate(zip(self.feature_sizes(image_size), self.strides, strict=True)):
            cell = self.cell_anchors(level, dtype=torch.float64)
            ys = (torch.arange(rows, dtype=torch.float64) + self.offset) * stride
            xs = (torch.arange(cols, dtype=torch.float64) + self.offset) * stride
            y, x = torch.meshgrid(ys, xs, indexing="ij")  # row-major: row, then column
            shifts = torch.stack((x, y, x, y), dim=-1).reshape(-1, 1, 4)
            levels.append((shifts + cell).reshape(-1, 4))
        return torch.cat(levels).float()

    def level_of(self, image_size: tuple[int, int]) -> Tensor:
        """(num_anchors,) int64: the level index (0 = P3) of each anchor of ``gen(image_size)``."""
        counts = torch.tensor(self.num_anchors_per_level(image_size))
        return torch.repeat_interleave(torch.arange(len(counts)), counts)


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if height < 1 or width < 1 or (height, width) != tuple(image_size):
        raise ValueError(f"image_size must be two positive integers (height, width), got {image_size!r}")
    return height, width


def level_names(generator: AnchorGenerator) -> list[str]:
    """'P3', 'P4', … for the generator's strides."""
    return [f"P{s.bit_length() - 1}" for s in generator.strides]

