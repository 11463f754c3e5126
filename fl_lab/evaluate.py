"""COCO box AP of a detector, computed by pycocotools (the paper's metric, Tables 1-2).

The numbers :func:`coco_eval` returns, as in COCO's ``summarize()`` table (100 detections
per image at most):

* ``AP`` — average precision averaged over the 10 IoU thresholds 0.50, 0.55, …, 0.95
  (and over classes): a detection counts as correct only if it also fits its object well.
* ``AP50``, ``AP75`` — AP at the single IoU threshold 0.5 (PASCAL VOC's metric) and 0.75.
* ``APs``, ``APm``, ``APl`` — AP over objects (and detections) of small (area < 32²),
  medium (32² ≤ area < 96²) and large (area ≥ 96² pixels) size.

The paper reports these on COCO minival (ablations, Table 1) and test-dev (Table 2).
Boxes are compared in the original image's pixels, where ``coco_ground_truth()`` is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Union

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data.transforms import collate
from .torch_utils import eval_mode

__all__ = ["METRICS", "coco_eval", "evaluate", "predict"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval's stats[:6], in order


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    device: Union[None, str, torch.device] = None,
    num_workers: int = 0,
    progress: bool = True,
    **detect_kwargs,
) -> list[dict]:
    """Run ``model`` (a :class:`fl_lab.model.RetinaNet`) over ``dataset`` in order.

    Returns one dict per image: ``image_id`` (int), ``boxes`` (D, 4) float32 x1 y1 x2 y2 in the
    ORIGINAL image's pixels (a target's ``scale`` from :class:`~fl_lab.data.transforms.Resize`
    is undone), ``scores`` (D,) and ``labels`` (D,) int64, all on the CPU. ``detect_kwargs``
    go to :meth:`RetinaNet.detect` (``score_thresh``, ``nms_thresh``, …). ``device``: default
    the model's; given, the model is moved there (as :func:`fl_lab.train.train` does).
    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    results = []
    with eval_mode(model, device):
        for batch in tqdm(loader, desc="predict", disable=not progress):
            output = model(batch.images.to(device))
            detections = model.detect(output, batch.image_sizes, **detect_kwargs)
            for det, target in zip(detections, batch.targets, strict=True):
                boxes = det["boxes"].float().cpu()
                sy, sx = target.get("scale", (1.0, 1.0))
                results.append({
                    "image_id": int(target["image_id"]),
                    "boxes": boxes / boxes.new_tensor([sx, sy, sx, sy]),
                    "scores": det["scores"].float().cpu(),
                    "labels": det["labels"].long().cpu(),
                })
    return results


def coco_eval(ground_truth: dict, detections: list[dict], category_ids: list[int], verbose: bool = False) -> dict:
    """COCO box AP of ``detections`` against a COCO-format ``ground_truth`` dict.

    detections: dicts with ``image_id``, ``boxes`` (D, 4) x1 y1 x2 y2, ``scores`` (D,) and
    ``labels`` (D,) contiguous labels, mapped to COCO ids by ``category_ids[label]`` (as
    :func:`predict` returns them). Images of the ground truth without a dict have no detections.
    ``verbose`` prints pycocotools' summary table.

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as floats in [0, 1]. An area range with
    no ground-truth object gives nan (pycocotools writes -1: AP is undefined there). Without a
    single detection every other value is 0.0.

    Raises ValueError for a label outside 0..len(category_ids)-1 or an image id that is not in
    the ground truth (detections of another dataset, or another split).
    """
    image_ids = {int(image["id"]) for image in ground_truth["images"]}
    results = []
    for det in detections:
        image_id, labels = int(det["image_id"]), torch.as_tensor(det["labels"]).reshape(-1)
        if image_id not in image_ids:
            raise ValueError(f"detections for image id {image_id}, which is not in the ground truth")
        bad = labels[(labels < 0) | (labels >= len(category_ids))]
        if len(bad):
            raise ValueError(f"image {image_id}: label {int(bad[0])} is outside 0..{len(category_ids) - 1} "
                             f"(the dataset has {len(category_ids)} categories)")
        boxes = torch.as_tensor(det["boxes"], dtype=torch.float64).reshape(-1, 4)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)  # COCO's [x, y, w, h]
        results += [{"image_id": image_id, "category_id": category_ids[label], "bbox": box, "score": score}
                    for box, label, score in zip(xywh.tolist(), labels.tolist(),
                                                 torch.as_tensor(det["scores"]).tolist(), strict=True)]

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        gt = COCO()
        gt.dataset = copy.deepcopy(ground_truth)  # COCOeval writes an "ignore" flag into every annotation
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes fails on an empty list; an index with no annotations scores 0 (or -1 without GT)
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return {name: float(v) if v >= 0 else math.nan
            for name, v in zip(METRICS, evaluator.stats[:6].tolist(), strict=True)}


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    device: Union[None, str, torch.device] = None,
    num_workers: int = 0,
    progress: bool = True,
    verbose: bool = False,
    **detect_kwargs,
) -> dict:
    """COCO AP of ``model`` on ``dataset``: :func:`predict`, then :func:`coco_eval` against
    ``dataset.coco_ground_truth()`` with ``dataset.category_ids``. See :func:`coco_eval`."""
    detections = predict(model, dataset, batch_size, device, num_workers, progress, **detect_kwargs)
    return coco_eval(dataset.coco_ground_truth(), detections, dataset.category_ids, verbose=verbose)
