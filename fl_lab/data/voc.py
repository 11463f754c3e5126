"""PASCAL VOC detection in fl_lab's conventions.

The layout is torchvision's ``VOCDetection`` (``root/VOCdevkit/VOC2012/{JPEGImages,
Annotations, ImageSets/Main/<image_set>.txt}``), which this module uses for the file list;
the XML is parsed here so that errors name their file. VOC boxes are 1-based pixel indices
with both ends inside the box, so pixel columns xmin…xmax cover [xmin - 1, xmax) in 0-based
continuous coordinates: fl_lab's box is ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import VOCDetection
from torchvision.datasets.voc import DATASET_YEAR_DICT

from ..boxes import clip_to_image
from .transforms import read_image

__all__ = ["VOC_CLASSES", "VOCDataset"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _parse_xml(path: Path) -> tuple[tuple[int, int], Tensor, Tensor, Tensor]:
    """One VOC XML file -> ((H, W), boxes (G, 4) 0-based x1 y1 x2 y2, labels (G,), difficult (G,) bool)."""
    try:
        root = ET.parse(path).getroot()
        size = (int(root.findtext("size/height")), int(root.findtext("size/width")))
        names, boxes, difficult = [], [], []
        for obj in root.findall("object"):
            names.append(obj.findtext("name").strip())
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([xmin - 1, ymin - 1, xmax, ymax])
            difficult.append(int(obj.findtext("difficult") or 0) == 1)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed VOC annotation ({err})") from None
    unknown = sorted(set(names) - set(VOC_CLASSES))
    if unknown:
        raise ValueError(f"{path}: unknown VOC class(es) {unknown}")
    boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if min(size) < 1 or bool((boxes_t[:, 2:] < boxes_t[:, :2]).any() or not boxes_t.isfinite().all()):
        raise ValueError(f"{path}: need a positive size and boxes with xmin <= xmax + 1, ymin <= ymax + 1")
    labels = torch.tensor([VOC_CLASSES.index(n) for n in names], dtype=torch.long)
    return size, boxes_t, labels, torch.tensor(difficult, dtype=torch.bool)


class VOCDataset(Dataset):
    """PASCAL VOC detection: item ``i`` is (image (3, H, W) float32 in [0, 1], target).

    ``target``: ``boxes`` (G, 4) float32, ``labels`` (G,) int64 indices into VOC_CLASSES,
    ``image_id`` = i (``ids[i]`` is the file name, e.g. "2008_000008"). ``difficult`` objects
    are left out of the targets unless ``keep_difficult``; :meth:`coco_ground_truth` always
    lists them with ``iscrowd: 1`` so COCOeval neither rewards nor penalises detections on
    them, as the VOC protocol does. Every XML file is read at construction; boxes reaching outside
    their image are clipped to it and left out where nothing of them remains (``num_dropped``
    counts both, with one warning, as :class:`~fl_lab.data.coco.CocoDataset` does).
    """

    class_names = list(VOC_CLASSES)
    num_classes = len(VOC_CLASSES)
    category_ids = list(range(1, len(VOC_CLASSES) + 1))  # label k is COCO-format category k + 1

    def __init__(
        self,
        root: Union[str, Path],
        year: str = "2012",
        image_set: str = "train",
        transform: Optional[Callable] = None,
        keep_difficult: bool = False,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"VOC root folder not found: {root}")
        try:
            voc = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        except RuntimeError:  # VOCDetection's message for a missing VOCdevkit folder
            raise FileNotFoundError(f"VOC folder not found: {root / DATASET_YEAR_DICT[year]['base_dir']}") from None
        except FileNotFoundError as err:
            raise FileNotFoundError(f"VOC image set list not found: {err.filename}") from None
        missing = [p for p in (*voc.images, *voc.annotations) if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} file(s) listed in {image_set}.txt not found, first: {missing[0]}")
        self.image_paths = [Path(p) for p in voc.images]
        self.ids = [p.stem for p in self.image_paths]
        self.records, self.num_dropped, first = [], 0, None
        for path in voc.annotations:  # boxes reaching outside the image: clipped, and left out if nothing remains
            size, boxes, labels, difficult = _parse_xml(Path(path))
            clipped, keep = clip_to_image(boxes, size)
            changed = int((~keep).sum()) + int((clipped[keep] != boxes[keep]).any(dim=1).sum())
            if changed and first is None:
                first = path
            self.num_dropped += changed
            self.records.append((size, clipped[keep], labels[keep], difficult[keep]))
        if self.num_dropped:
            warnings.warn(f"{root} ({image_set}): {self.num_dropped} box(es) reached outside their image (the first in "
                          f"{first}): clipped to the image, and left out where nothing of them remained", stacklevel=2)
        self.transform, self.keep_difficult = transform, keep_difficult

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        size, boxes, labels, difficult = self.records[index]
        image = read_image(self.image_paths[index], size=size)
        keep = torch.ones_like(difficult) if self.keep_difficult else ~difficult
        target = {"boxes": boxes[keep], "labels": labels[keep], "image_id": index}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def coco_ground_truth(self) -> dict:
        """Every object as a COCO-format dict: bbox [x1, y1, w, h], difficult ones with iscrowd 1."""
        images, annotations = [], []
        for index, ((height, width), boxes, labels, difficult) in enumerate(self.records):
            images.append({"id": index, "file_name": self.image_paths[index].name, "width": width, "height": height})
            for (x1, y1, x2, y2), label, hard in zip(boxes.tolist(), labels.tolist(), difficult.tolist(), strict=True):
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": index, "category_id": label + 1,
                     "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(hard)}
                )  # fmt: skip
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(VOC_CLASSES)]
        return {"images": images, "annotations": annotations, "categories": categories}
