"""Reading COCO-format annotation files (the format fl_lab uses for all hand-made boxes).

COCO stores a box as ``[x, y, width, height]``; fl_lab converts it to ``x1, y1, x2, y2`` and
maps the category ids (sparse in COCO: 1…90) to contiguous labels 0…K-1 in id order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor

__all__ = ["CocoAnnotations", "load_coco_annotations"]


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
    offending entry, for malformed content.
    """
    path = Path(path)
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
        raise ValueError(f"{path}: every image needs an 'id' and every category an 'id' and a 'name' ({err!r})") from None
    label_of = {cid: i for i, (cid, _) in enumerate(categories)}
    boxes: dict[int, list] = {i: [] for i in images}
    labels: dict[int, list] = {i: [] for i in images}
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
        if not all(v == v and abs(v) != float("inf") for v in (x, y, w, h)) or w < 0 or h < 0:
            raise ValueError(f"{path}: annotation {ident} has a bad bbox {[x, y, w, h]} (need finite x, y and w, h >= 0)")
        if ann.get("iscrowd", 0):
            continue
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(label_of[category])
    return CocoAnnotations(
        images=images,
        category_ids=[cid for cid, _ in categories],
        category_names=[name for _, name in categories],
        boxes={i: torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for i, b in boxes.items()},
        labels={i: torch.tensor(l, dtype=torch.long) for i, l in labels.items()},
    )
