"""Figures of lesson 05: what a trained detector finds, next to the ground truth."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from .anchors import _draw

GROUND_TRUTH_STYLE = {"color": "white", "gapcolor": "black", "ls": "--", "lw": 1.5}


def detections_figure(
    images: Sequence[Tensor],
    detections: Sequence[dict],
    class_names: Sequence[str],
    score_thresh: float = 0.3,
    targets: Optional[Sequence[dict]] = None,
    columns: int = 4,
    title: str = "Detections",
) -> Figure:
    """One panel per image (3, H, W) in [0, 1]: its detections scoring at least ``score_thresh``.

    ``detections[i]``: ``boxes`` (D, 4) x1 y1 x2 y2 in the pixels of ``images[i]``, ``scores``
    (D,), ``labels`` (D,) and optionally ``image_id`` (as :meth:`RetinaNet.detect` or
    :func:`fl_lab.evaluate.predict` give them; predict's boxes are in the original image's
    pixels, so pair them with images before any Resize). Boxes are coloured by class as in
    :func:`fl_lab.plots.dataset_figure` and tagged "name score"; ``targets[i]["boxes"]``, when
    given, are drawn as dashed white-and-black outlines.
    """
    if len(detections) != len(images) or (targets is not None and len(targets) != len(images)):
        raise ValueError(f"need one detections dict (and target) per image: {len(images)} images, "
                         f"{len(detections)} detections, {'no' if targets is None else len(targets)} targets")
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(3.2 * columns, 3.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    shown: set[int] = set()  # classes drawn somewhere: the legend names these
    for i, (ax, image, det) in enumerate(zip(axes, images, detections, strict=False)):  # spare axes: last row
        ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(),
                  extent=(0, image.shape[2], image.shape[1], 0))
        if targets is not None:
            _draw(ax, torch.as_tensor(targets[i]["boxes"]).detach().cpu(), label="ground truth", **GROUND_TRUTH_STYLE)
        keep = torch.as_tensor(det["scores"]).detach().cpu() >= score_thresh
        boxes = torch.as_tensor(det["boxes"]).detach().cpu()[keep].reshape(-1, 4)
        scores, labels = torch.as_tensor(det["scores"]).cpu()[keep], torch.as_tensor(det["labels"]).cpu()[keep]
        colors = [f"C{k % 10}" for k in labels.tolist()]
        _draw(ax, boxes, label="detections", colors=colors, lw=1.5)
        tags = label_positions(boxes[:, :2].tolist(), width=0.3 * image.shape[2], height=0.06 * image.shape[1])
        for (x, y), score, k, color in zip(tags, scores.tolist(), labels.tolist(), colors, strict=True):
            ax.text(x, y, f"{class_names[k]} {score:.2f}", color="white", fontsize="xx-small", va="bottom",
                    clip_on=True, bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8})
        shown.update(labels.tolist())
        image_id = det.get("image_id", i)
        n = len(boxes)
        ax.set(title=f"image {image_id}: {n} detection{'s' * (n != 1)} ≥ {score_thresh:.2f}",
               xlabel="x (pixels)", ylabel="y (pixels)")
    for ax in axes[len(images):]:
        ax.axis("off")
    handles = [Line2D([], [], color=f"C{k % 10}", lw=2, label=class_names[k]) for k in sorted(shown)]
    if not handles:
        handles = [Line2D([], [], color="none", label=f"no detection ≥ {score_thresh:.2f}")]
    if targets is not None:
        handles.append(Line2D([], [], label="ground truth", **GROUND_TRUTH_STYLE))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2 * columns))
    fig.suptitle(title)
    return fig


def label_positions(corners: Sequence[Sequence[float]], width: float, height: float) -> list[tuple[float, float]]:
    """Where each box's tag goes: at its top-left corner (x1, y1), or, when an earlier tag (of a higher
    score, as detections come) would cover it, moved down a line until none does. Duplicate boxes of
    different classes sit at nearly one corner, and their tags would otherwise print over each other.

    corners: (D, 2) top-left corners in pixels (y grows downwards); width, height: a tag's size in pixels.
    """
    placed: list[tuple[float, float]] = []
    for x, y in corners:
        while any(abs(x - px) < width and abs(y - py) < height for px, py in placed):
            y += height
        placed.append((x, y))
    return placed


def precision_recall_figure(recall: Tensor, precision: Tensor, levels: Tensor, interpolated: Tensor,
                            title: str = "Precision against recall") -> Figure:
    """A precision–recall curve and the area COCO's AP measures.

    recall, precision: (D,) after each of D detections taken by decreasing score; levels: (L,)
    the recall levels AP samples (COCO: 101, 0 to 1), interpolated: (L,) the precision counted
    at each — the best precision at that recall or beyond, 0 past the last recall reached.
    """
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(levels, interpolated, step="post", alpha=0.25,
                    label=f"AP = area = mean of the {len(levels)} samples: {float(interpolated.mean()):.3f}")
    ax.step(levels, interpolated, where="post", color="C0", lw=2, label="interpolated precision")
    ax.plot(recall, precision, "o--", color="C1", label="precision after each detection")
    for i, (r, p) in enumerate(zip(recall.tolist(), precision.tolist(), strict=True)):
        ax.annotate(str(i + 1), (r, p), textcoords="offset points", xytext=(5, 5), fontsize=8, color="C1")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.05), xlabel="recall (objects found / objects)",
           ylabel="precision (correct / detections)", title=title)
    ax.legend(loc="lower left")
    return fig
