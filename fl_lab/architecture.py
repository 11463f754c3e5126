"""A RetinaNet's architecture made visible (lesson 03): its parts' sizes and each level's shapes."""

from __future__ import annotations

import torch

from .model import RetinaNet
from .torch_utils import eval_mode

__all__ = ["describe", "parameter_counts"]


def parameter_counts(model: RetinaNet) -> dict[str, int]:
    """Parameters of each part: the ResNet, the FPN (with P6, P7) and the two subnets."""
    parts = {"ResNet backbone": model.backbone.body, "FPN (P3–P7)": model.backbone.fpn,
             "class subnet": model.class_subnet, "box subnet": model.box_subnet}
    return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}


@torch.no_grad()
def describe(model: RetinaNet, image_size: tuple[int, int]) -> str:
    """A level-by-level table of tensor shapes for one (H, W) image, from a real forward pass."""
    with eval_mode(model):
        body = model.backbone.body(torch.zeros(1, 3, *image_size, device=model.class_subnet.out.weight.device))
        pyramid = list(model.backbone.fpn(body).values())
    c_shapes = [tuple(c.shape[1:]) for c in body.values()] + ["", ""]  # P6, P7 have no C level
    k, a = model.num_classes, model.anchor_generator.num_anchors_per_location
    rows = [f"input {tuple(image_size)} → levels (C: ResNet stage, P: pyramid; shapes are channels × H × W)",
            f"{'level':<6}{'stride':>7}  {'C (ResNet)':<16}{'P (FPN)':<16}{'class out':<16}{'box out':<16}"
            f"{'anchors':>8}"]
    for i, (p, c) in enumerate(zip(pyramid, c_shapes, strict=True)):
        _, ch, h, w = p.shape
        c_text = " × ".join(map(str, c)) if c else "—"
        rows.append(f"P{i + 3:<5}{2 ** (i + 3):>7}  {c_text:<16}{f'{ch} × {h} × {w}':<16}"
                    f"{f'{a * k} × {h} × {w}':<16}{f'{a * 4} × {h} × {w}':<16}{h * w * a:>8,}")
    return "\n".join(rows)
