"""Which regime a dataset trains in: how well the anchors cover its objects, and the imbalance.

Two numbers decide what a RetinaNet learns from a dataset (paper §4 "Anchors", §3):

* **coverage** — an object whose best anchor has IoU < 0.5 gets no foreground anchor
  under the paper's rule (below 0.4 its anchors are even trained as *background*): the
  detector is taught to call it background, the very "hard negative" the focal loss
  up-weights;
* **imbalance** — negatives per positive anchor. The paper's detector scores ~100k anchors per
  image (§4.1), and its example imbalance is 1 : 1000 (§3); that extreme is what the focal loss
  was made for.

:func:`anchor_coverage` measures both on any detection dataset (Shapes, COCO, VOC) with the
model's own anchors and matcher; lesson 02 shows it for the kit's presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..anchors import AnchorGenerator
from ..boxes import box_iou_broadcast
from ..loss import BACKGROUND, IGNORE
from ..matcher import Matcher, assign_targets

__all__ = ["AnchorCoverage", "anchor_coverage"]


@dataclass
class AnchorCoverage:
    """What :func:`anchor_coverage` measured.

    best_iou: (N,) each object's best IoU with any anchor of its image (N objects in all).
    positives, ignored, negatives: (I,) anchors per image assigned foreground / ignored /
        background by the matcher (I images).
    fg_iou, bg_iou: the matcher's thresholds (0.5 and 0.4 in the paper).
    num_classes: K, for the sigmoid entries' imbalance (each negative anchor is K negative entries).
    """

    best_iou: Tensor
    positives: Tensor
    ignored: Tensor
    negatives: Tensor
    fg_iou: float
    bg_iou: float
    num_classes: int

    @property
    def num_images(self) -> int:
        return len(self.positives)

    @property
    def num_objects(self) -> int:
        return len(self.best_iou)

    @property
    def unmatched_share(self) -> float:
        """Share of objects whose best anchor IoU is below fg_iou: no foreground anchor by the paper's rule."""
        return float((self.best_iou < self.fg_iou).float().mean()) if self.num_objects else 0.0

    @property
    def background_share(self) -> float:
        """Share of objects whose best anchor IoU is below bg_iou: every anchor on them is trained as background."""
        return float((self.best_iou < self.bg_iou).float().mean()) if self.num_objects else 0.0

    @property
    def anchors_per_image(self) -> float:
        return float((self.positives + self.ignored + self.negatives).double().mean())

    @property
    def imbalance(self) -> float:
        """Negative anchors per positive anchor over the whole set (inf without positives)."""
        positives = int(self.positives.sum())
        return int(self.negatives.sum()) / positives if positives else float("inf")

    @property
    def entry_imbalance(self) -> float:
        """Negative sigmoid entries per positive one: a background anchor has K negative entries,
        a foreground anchor one positive and K - 1 negative (what the loss actually sums)."""
        positives, k = int(self.positives.sum()), self.num_classes
        return (int(self.negatives.sum()) * k + positives * (k - 1)) / positives if positives else float("inf")

    def summary(self) -> str:
        """A few lines a lesson prints."""

        def per_image(t: Tensor) -> float:
            return float(t.double().mean())

        return "\n".join([
            f"{self.num_images} images, {self.num_objects} objects ({self.num_objects / max(self.num_images, 1):.1f} "
            f"per image), {self.anchors_per_image:,.0f} anchors per image",
            f"objects whose best anchor has IoU < {self.fg_iou:g}: {self.unmatched_share:.1%} "
            f"(< {self.bg_iou:g}, so every anchor on them is background by the paper's rule: "
            f"{self.background_share:.1%})",
            f"anchors per image: {per_image(self.positives):.1f} positive, {per_image(self.ignored):.1f} ignored, "
            f"{per_image(self.negatives):,.0f} negative",
            f"negatives per positive: {self.imbalance:,.0f} : 1 anchors "
            f"({self.entry_imbalance:,.0f} : 1 sigmoid entries with K = {self.num_classes})",
        ])


@torch.no_grad()
def anchor_coverage(
    dataset: Dataset,
    anchor_generator: Optional[AnchorGenerator] = None,
    matcher: Optional[Matcher] = None,
    num_images: Optional[int] = None,
    progress: bool = False,
) -> AnchorCoverage:
    """Measure anchor coverage and the negative : positive imbalance of ``dataset``.

    Args:
        dataset: items ``(image (3, H, W), {"boxes": (G, 4), "labels": (G,)})`` — Shapes, COCO
            or VOC after their transforms (the sizes the model sees).
        anchor_generator: default the paper's :class:`AnchorGenerator`.
        matcher: default the paper's strict rule, ``Matcher(0.5, 0.4, allow_low_quality=False)``;
            pass the model's matcher to count what it trains on.
        num_images: the first this many images (default all).
    """
    num_classes = getattr(dataset, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError("dataset must say its num_classes (Shapes, CocoDataset and VOCDataset do)")
    generator = anchor_generator or AnchorGenerator()
    matcher = matcher or Matcher(allow_low_quality=False)
    count = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    if count < 1:
        raise ValueError(f"anchor_coverage needs at least one image, got num_images={num_images} of {len(dataset)}")
    anchors_by_size: dict[tuple[int, int], Tensor] = {}
    best, counts = [], torch.zeros(count, 3, dtype=torch.long)
    for i in tqdm(range(count), desc="anchor coverage", disable=not progress, mininterval=2):
        image, target = dataset[i]
        size = tuple(image.shape[-2:])
        if size not in anchors_by_size:
            anchors_by_size[size] = generator.gen(size)
        anchors, boxes = anchors_by_size[size], target["boxes"].float()
        if len(boxes):
            best.append(box_iou_broadcast(boxes.unsqueeze(1), anchors).amax(dim=1))
        labels = assign_targets(anchors, boxes[None], target["labels"][None], matcher=matcher).labels[0]
        counts[i] = torch.stack([(labels >= 0).sum(), (labels == IGNORE).sum(), (labels == BACKGROUND).sum()])
    return AnchorCoverage(torch.cat(best) if best else torch.zeros(0), counts[:, 0], counts[:, 1], counts[:, 2],
                          matcher.fg_iou, matcher.bg_iou, num_classes)
