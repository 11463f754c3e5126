"""A RetinaNet's architecture made visible (lesson 03): its parts' sizes and each level's shapes."""

from __future__ import annotations

import torch

from .model import RetinaNet
from .torch_utils import eval_mode

__all__ = ["describe", "level_shapes", "parameter_counts"]


def parameter_counts(model: RetinaNet) -> dict[str, int]:
    """Parameters of each part: the ResNet, the FPN (with P6, P7) and the two subnets."""
    parts = {"ResNet backbone": model.backbone.body, "FPN (P3–P7)": model.backbone.fpn,
             "class subnet": model.class_subnet, "box subnet": model.box_subnet}
    return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}


@torch.no_grad()
def level_shapes(model: RetinaNet, image_size: tuple[int, int]) -> list[dict]:
    """For one (H, W) image, from a real forward pass, each level P3…P7: its stride, the ResNet map it
    reads (C3–C5, channels × H × W; None for P6, P7), its pyramid map, the class and box subnets'
    outputs (channels × H × W) and its anchors."""
    with eval_mode(model):
        body = model.backbone.body(torch.zeros(1, 3, *image_size, device=model.class_subnet.out.weight.device))
        pyramid = list(model.backbone.fpn(body).values())
    c_shapes = [tuple(c.shape[1:]) for c in body.values()] + [None, None]  # P6, P7 have no C level
    k, a = model.num_classes, model.anchor_generator.num_anchors_per_location
    return [{"level": f"P{i + 3}", "stride": 2 ** (i + 3), "C": c, "P": tuple(p.shape[1:]),
             "class": (a * k, *p.shape[2:]), "box": (a * 4, *p.shape[2:]), "anchors": p.shape[2] * p.shape[3] * a}
            for i, (p, c) in enumerate(zip(pyramid, c_shapes, strict=True))]


def describe(model: RetinaNet, image_size: tuple[int, int]) -> str:
    """A level-by-level table of tensor shapes for one (H, W) image (:func:`level_shapes`)."""
    def shape(s) -> str:
        return " × ".join(map(str, s)) if s else "—"

    rows = [f"input {tuple(image_size)} → levels (C: ResNet stage, P: pyramid; shapes are channels × H × W)",
            f"{'level':<6}{'stride':>7}  {'C (ResNet)':<16}{'P (FPN)':<16}{'class out':<16}{'box out':<16}"
            f"{'anchors':>8}"]
    for r in level_shapes(model, image_size):
        rows.append(f"{r['level']:<6}{r['stride']:>7}  {shape(r['C']):<16}{shape(r['P']):<16}{shape(r['class']):<16}"
                    f"{shape(r['box']):<16}{r['anchors']:>8,}")
    return "\n".join(rows)
