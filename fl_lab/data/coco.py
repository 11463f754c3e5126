"""COCO-format annotation files and the COCO detection dataset.

COCO stores a box as ``[x, y, width, height]``; fl_lab converts it to ``x1, y1, x2, y2`` and
maps the category ids (sparse in COCO: 1…90) to contiguous labels 0…K-1 in id order.
One reader, :func:`load_coco_annotations`, validates a file; :class:`CocoDataset` builds on it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..boxes import clip_to_image
from .transforms import read_image

__all__ = ["CocoAnnotations", "CocoDataset", "load_coco_annotations"]


@dataclass
class CocoAnnotations:
    """The boxes of a COCO-format file, per image, in fl_lab's conventions."""

    images: dict[int, dict]  # image id -> {"file_name", "width", "height", ...}
    category_ids: list[int]  # contiguous label -> COCO category id
    category_names: list[str]  # contiguous label -> name
    boxes: dict[int, Tensor]  # image id -> (G, 4) float32 x1 y1 x2 y2
    labels: dict[int, Tensor]  # image id -> (G,) int64 contiguous labels


def load_coco_annotations(path: Union[str, Path]) -> CocoAnnotations:
    """Read a COCO-format JSON file. Crowd annotations (``iscrowd: 1``) are left out.

    Raises FileNotFoundError for a missing file and ValueError, naming the file and the
    offending entry, for malformed content (every image needs a ``file_name`` and a positive
    ``width`` and ``height``, every box finite values with w, h >= 0).
    """
    return _read_coco(Path(path), drop_degenerate=False)[1]


def _read_coco(path: Path, drop_degenerate: bool) -> tuple[dict, CocoAnnotations, int]:
    """Validate and convert a COCO file -> (its parsed dict, the annotations, boxes dropped).

    ``drop_degenerate`` clips the boxes to their image and leaves out those then under 1 px wide
    or high (:func:`fl_lab.boxes.clip_to_image`, as VOC loading does); the count returned is of
    boxes dropped or clipped. The dict gets ``iscrowd`` (0) and ``area`` (w h) where an annotation
    lacks them, as COCOeval needs both.
    """
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing the list '{key}' of a COCO-format file")
    try:
        images = {int(im["id"]): im for im in data["images"]}
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: every image needs an 'id' "
                         f"and every category an 'id' and a 'name' ({err!r})") from None
    for what, ids in (("image", [int(im["id"]) for im in data["images"]]), ("category", [c for c, _ in categories])):
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise ValueError(f"{path}: {what} id {min(repeated)} appears more than once")
    for image_id, im in images.items():
        size = (im.get("width"), im.get("height"))
        if not isinstance(im.get("file_name"), str) or not all(_positive(v) for v in size):
            raise ValueError(f"{path}: image {image_id} needs a 'file_name' and a positive 'width', 'height': {size}")
    label_of = {cid: i for i, (cid, _) in enumerate(categories)}
    boxes: dict[int, list] = {i: [] for i in images}
    labels: dict[int, list] = {i: [] for i in images}
    dropped = 0
    for ann in data["annotations"]:
        ident = ann.get("id", "?") if isinstance(ann, dict) else "?"
        try:
            image_id, category, (x, y, w, h) = int(ann["image_id"]), int(ann["category_id"]), map(float, ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: annotation {ident} needs image_id, category_id and bbox [x, y, w, h]") from None
        if image_id not in images:
            raise ValueError(f"{path}: annotation {ident} refers to unknown image {image_id}")
        if category not in label_of:
            raise ValueError(f"{path}: annotation {ident} refers to unknown category {category}")
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            bad = [x, y, w, h]
            raise ValueError(f"{path}: annotation {ident} has a bad bbox {bad} (need finite values, w >= 0, h >= 0)")
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", w * h)
        if ann["iscrowd"]:
            continue
        box = [x, y, x + w, y + h]
        if drop_degenerate:
            im = images[image_id]
            clipped, keep = clip_to_image(torch.tensor([box]), (im["height"], im["width"]))
            dropped += int(not keep[0]) + int(bool(keep[0]) and clipped[0].tolist() != box)
            if not keep[0]:
                continue
            box = clipped[0].tolist()
        boxes[image_id].append(box)
        labels[image_id].append(label_of[category])
    annotations = CocoAnnotations(
        images=images,
        category_ids=[cid for cid, _ in categories],
        category_names=[name for _, name in categories],
        boxes={i: torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for i, b in boxes.items()},
        labels={i: torch.tensor(ids, dtype=torch.long) for i, ids in labels.items()},
    )
    return data, annotations, dropped


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


class CocoDataset(Dataset):
    """COCO detection: item ``i`` is (image (3, H, W) float32 in [0, 1], target).

    ``target``: ``boxes`` (G, 4) float32 x1 y1 x2 y2, ``labels`` (G,) int64, ``image_id``.
    Training targets leave out crowd boxes; boxes reaching outside their image are clipped to it,
    and those then under 1 px wide or high left out (``num_dropped`` counts both, with one
    warning per file, as :class:`~fl_lab.data.voc.VOCDataset` does); images without boxes stay.
    :meth:`coco_ground_truth` is the file as read, crowds and all, for COCOeval.
    Also: ``coco`` (pycocotools' COCO of the file), ``image_ids`` (item order, sorted),
    ``category_ids``, ``class_names``, ``num_classes``.

    ``check_files`` (default) stats every image at construction and names the first missing
    one (one stat per image); :meth:`__getitem__` raises FileNotFoundError regardless.
    ``category_id_labels``: give each box its COCO category id (1…90) as its label instead of
    the contiguous 0…K-1 -- the label space of torchvision's COCO models (91 outputs).
    """

    def __init__(
        self,
        image_dir: Union[str, Path],
        annotation_file: Union[str, Path],
        transform: Optional[Callable] = None,
        check_files: bool = True,
        category_id_labels: bool = False,
    ):
        self.image_dir, self.annotation_file = Path(image_dir), Path(annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        data, self.annotations, self.num_dropped = _read_coco(self.annotation_file, drop_degenerate=True)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            self.coco.createIndex()
        self.image_ids: list[int] = sorted(self.annotations.images)
        self.category_ids: list[int] = self.annotations.category_ids
        self.class_names: list[str] = self.annotations.category_names
        self.num_classes = len(self.class_names)
        self.transform = transform
        self.category_id_labels = category_id_labels
        if check_files:
            missing = [p for p in map(self.image_path, range(len(self))) if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} image(s) missing, the first: {missing[0]}")
        if self.num_dropped:
            warnings.warn(f"{self.annotation_file}: {self.num_dropped} box(es) reached outside their image "
                          "or were under 1 px: clipped to the image, and left out where nothing of them remained",
                          stacklevel=2)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.annotations.images[self.image_ids[index]]["file_name"]

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image_id = self.image_ids[index]
        info = self.annotations.images[image_id]
        image = read_image(self.image_path(index), size=(info["height"], info["width"]))
        target = {
            "boxes": self.annotations.boxes[image_id].clone(),
            "labels": self.annotations.labels[image_id].clone(),
            "image_id": image_id,
        }
        if self.category_id_labels:
            target["labels"] = torch.tensor(self.category_ids, dtype=torch.long)[target["labels"]]
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def coco_ground_truth(self) -> dict:
        """A copy of the COCO-format dict, crowd (``iscrowd: 1``) and degenerate boxes included."""
        return copy.deepcopy(self.coco.dataset)
