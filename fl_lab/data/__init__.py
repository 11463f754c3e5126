"""Datasets, transforms and downloads.

Every dataset yields ``(image (3, H, W) float in [0, 1], {"boxes": (G, 4), "labels": (G,), "image_id"})``
and describes its evaluation ground truth in COCO format (``coco_ground_truth()``).

* :class:`Shapes` — the built-in synthetic dataset (no files needed), the default everywhere;
* :class:`CocoDataset` — a COCO-format folder; :class:`VOCDataset` — PASCAL VOC;
* :mod:`~fl_lab.data.transforms` — resize, flip, and batching (normalise, pad to a multiple of 32);
* :func:`download` — fetch COCO or VOC archives (``python -m fl_lab.data.archives --help``).
"""

from .coco import CocoDataset, load_coco_annotations
from .shapes import Shapes
from .transforms import Batch, Compose, RandomHorizontalFlip, Resize, collate
from .voc import VOCDataset

__all__ = [
    "Batch",
    "CocoDataset",
    "Compose",
    "RandomHorizontalFlip",
    "Resize",
    "Shapes",
    "VOCDataset",
    "collate",
    "download",
    "load_coco_annotations",
]


def __getattr__(name: str):
    # Imported on first use, so that `python -m fl_lab.data.archives` finds its module
    # not yet loaded (runpy warns otherwise).
    if name == "download":
        from .archives import download

        return download
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
