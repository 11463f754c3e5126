"""Figures of lesson 02: the anchor pyramid on an image, and how matching labels it."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torch import Tensor

from ..analysis import ASSIGNMENT_KINDS
from ..anchors import AnchorGenerator, level_names

KIND_COLORS = {"foreground": "tab:green", "ignored": "tab:orange", "background": "tab:blue"}
RATIO_COLORS = ("tab:red", "tab:green", "tab:blue", "tab:purple", "tab:brown")
SCALE_STYLES = ("-", "--", ":", "-.")


def _rectangles(boxes: Tensor) -> np.ndarray:
    """(N, 4) x1 y1 x2 y2 -> (N, 5, 2) closed outlines for a LineCollection."""
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4).numpy()
    x1, y1, x2, y2 = b.T
    return np.stack([np.stack(p, axis=1) for p in ((x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1))], axis=1)


def _draw(ax, boxes: Tensor, label: Optional[str] = None, **style) -> None:
    ax.add_collection(LineCollection(_rectangles(boxes), label=label, **style))


def _show(ax, image, boxes: Optional[Tensor] = None, margin: float = 0.0) -> None:
    """The image in pixel coordinates, with room for boxes that reach outside it."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    x0, y0, x1, y1 = -margin * width, -margin * height, (1 + margin) * width, (1 + margin) * height
    if boxes is not None and len(boxes):
        b = torch.as_tensor(boxes).reshape(-1, 4)
        x0, y0 = min(x0, float(b[:, 0].min())), min(y0, float(b[:, 1].min()))
        x1, y1 = max(x1, float(b[:, 2].max())), max(y1, float(b[:, 3].max()))
    ax.set(xlim=(x0, x1), ylim=(y1, y0), xlabel="x (pixels)", ylabel="y (pixels)")
    ax.add_patch(Rectangle((0, 0), width, height, fill=False, ec="black", lw=1, ls="--"))


def _anchor_legend(ax, generator: AnchorGenerator, ratios: Sequence[int], scales: Sequence[int], **kw) -> None:
    handles = [
        Line2D([], [], color=RATIO_COLORS[i % len(RATIO_COLORS)], lw=2,
               label=f"aspect ratio h/w = {generator.aspect_ratios[i]:g}")
        for i in ratios
    ] + [
        Line2D([], [], color="black", ls=SCALE_STYLES[j % len(SCALE_STYLES)],
               label=f"scale 2^({j}/3) = {generator.scales[j]:.2f}")
        for j in scales
    ]
    ax.legend(handles=handles, **kw)


def _draw_cell(ax, generator: AnchorGenerator, level: int, cx: float, cy: float, ratios, scales, lw=2.0) -> None:
    cell = generator.cell_anchors(level, dtype=torch.float64) + torch.tensor([cx, cy, cx, cy], dtype=torch.float64)
    n_scales = len(generator.scales)
    for i in ratios:
        for j in scales:
            _draw(ax, cell[i * n_scales + j], color=RATIO_COLORS[i % len(RATIO_COLORS)],
                  ls=SCALE_STYLES[j % len(SCALE_STYLES)], lw=lw)


def ground_truth_figure(image, boxes: Tensor, labels: Tensor, class_names: Sequence[str]) -> Figure:
    """The image with its ground-truth boxes (G, 4), each named by its class."""
    fig = Figure(figsize=(6.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    _show(ax, image)
    colors = [f"C{i % 10}" for i in range(len(class_names))]
    for box, label in zip(torch.as_tensor(boxes).tolist(), torch.as_tensor(labels).tolist(), strict=True):
        ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, ec=colors[label], lw=2.5,
                               label=f"{class_names[label]} ({box[2] - box[0]:.0f}×{box[3] - box[1]:.0f})"))
    ax.set_title(f"{len(boxes)} ground-truth boxes")
    ax.legend(loc="lower left", fontsize="small")
    return fig


def cell_anchors_figure(image, generator: AnchorGenerator, level: int, center: tuple[float, float]) -> Figure:
    """The A anchors of the ``level`` location nearest to ``center`` (x, y), drawn on the image."""
    stride = generator.strides[level]
    cx = round(center[0] / stride - generator.offset) * stride + generator.offset * stride
    cy = round(center[1] / stride - generator.offset) * stride + generator.offset * stride
    fig = Figure(figsize=(6.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    cell = generator.cell_anchors(level, dtype=torch.float64) + torch.tensor([cx, cy, cx, cy], dtype=torch.float64)
    _show(ax, image, cell)
    _draw_cell(ax, generator, level, cx, cy, range(len(generator.aspect_ratios)), range(len(generator.scales)))
    ax.plot([cx], [cy], "o", color="white", mec="black")
    name = level_names(generator)[level]
    ax.set_title(f"The {generator.num_anchors_per_location} anchors of one {name} location ({cx:g}, {cy:g}), "
                 f"stride {stride}")
    _anchor_legend(ax, generator, range(len(generator.aspect_ratios)), range(len(generator.scales)),
                   loc="lower left", fontsize="small")
    return fig


def pyramid_figure(image, generator: AnchorGenerator, locations_per_level: int = 3, seed: int = 0) -> Figure:
    """One panel per level: every anchor centre as a dot, and all A anchors of a few random locations."""
    image = np.asarray(image)
    size = image.shape[:2]
    names = level_names(generator)
    fig = Figure(figsize=(4.2 * len(names), 4.8), layout="constrained")
    axes = fig.subplots(1, len(names))
    gen = torch.Generator().manual_seed(seed)
    for level, (ax, (rows, cols), stride) in enumerate(zip(axes, generator.feature_sizes(size), generator.strides,
                                                           strict=True)):
        ys = (torch.arange(rows) + generator.offset) * stride
        xs = (torch.arange(cols) + generator.offset) * stride
        cell = generator.cell_anchors(level, dtype=torch.float64)
        picks = torch.randperm(rows * cols, generator=gen)[:locations_per_level]
        centres = [(float(xs[p % cols]), float(ys[p // cols])) for p in picks]
        reach = torch.cat([cell + torch.tensor([x, y, x, y], dtype=torch.float64) for x, y in centres])
        _show(ax, image, reach)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ax.plot(grid_x.reshape(-1), grid_y.reshape(-1), ".", ms=1.5 if rows * cols > 500 else 4, color="white",
                label="anchor centres")
        for x, y in centres:
            _draw_cell(ax, generator, level, x, y, range(len(generator.aspect_ratios)), range(len(generator.scales)),
                       lw=1.2)
        count = rows * cols * generator.num_anchors_per_location
        ax.set_title(f"{names[level]}: stride {stride}, {rows}×{cols} cells, {count:,} anchors")
        ax.legend(loc="lower left", fontsize="small")
    return fig


def anchor_grid_figure(image, generator: AnchorGenerator, level: int, ratio_index: int, scale_index: int) -> Figure:
    """One anchor shape (level, aspect ratio, scale) at every location of its level."""
    image = np.asarray(image)
    size = image.shape[:2]
    anchors = generator.gen(size).double()
    levels = generator.level_of(size)
    n_scales = len(generator.scales)
    per_level = anchors[levels == level].reshape(-1, generator.num_anchors_per_location, 4)
    shape = per_level[:, ratio_index * n_scales + scale_index]
    fig = Figure(figsize=(6.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    _show(ax, image, shape)
    color = RATIO_COLORS[ratio_index % len(RATIO_COLORS)]
    _draw(ax, shape, color=color, lw=0.6, alpha=0.6, label=f"{len(shape):,} anchors of this shape")
    _draw(ax, shape[len(shape) // 2], color="white", lw=2.5, label="one of them")
    w, h = float(shape[0, 2] - shape[0, 0]), float(shape[0, 3] - shape[0, 1])
    name = level_names(generator)[level]
    ax.set_title(
        f"{name}, aspect ratio {generator.aspect_ratios[ratio_index]:g}, "
        f"scale {generator.scales[scale_index]:.2f}: {w:.0f}×{h:.0f} px"
    )
    ax.legend(loc="lower left", fontsize="small")
    return fig


def assignment_figure(
    image,
    anchors: Tensor,
    levels: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    low_quality: Optional[Tensor] = None,
    names: Optional[Sequence[str]] = None,
) -> Figure:
    """One panel per level: ground truth, foreground and ignored anchors, low-quality matches.

    anchors: (A, 4); levels: (A,) level index; labels: (A,) index form (class, -1, -2);
    gt_boxes: (G, 4); low_quality: (A,) bool, foreground only thanks to the low-quality rule.
    Background anchors are too many to draw: each panel's title counts them.
    """
    num_levels = int(levels.max()) + 1
    names = list(names) if names is not None else [f"level {i}" for i in range(num_levels)]
    low_quality = torch.zeros_like(labels, dtype=torch.bool) if low_quality is None else low_quality
    fig = Figure(figsize=(4.2 * num_levels, 5.0), layout="constrained")
    axes = fig.subplots(1, num_levels)
    for level, ax in enumerate(axes):
        on = levels == level
        fg = on & (labels >= 0) & ~low_quality
        ign = on & (labels == -2)
        lq = on & low_quality
        _show(ax, image, torch.cat([anchors[fg | ign | lq], gt_boxes]))
        _draw(ax, gt_boxes, color="white", lw=2.5, label="ground truth")
        _draw(ax, anchors[ign], color=KIND_COLORS["ignored"], lw=0.8, label=f"ignored ({int(ign.sum())})")
        _draw(ax, anchors[fg], color=KIND_COLORS["foreground"], lw=1.2, label=f"foreground ({int(fg.sum())})")
        _draw(ax, anchors[lq], color="tab:red", lw=1.5, ls="--", label=f"low-quality match ({int(lq.sum())})")
        n_bg = int((on & (labels == -1)).sum())
        ax.set_title(f"{names[level]}: {n_bg:,} background anchors")
        # below the panel: inside, it would cover the small objects near the image's edges
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize="small")
    return fig


def assignment_counts_figure(counts: Tensor, names: Sequence[str], title: str) -> Figure:
    """Foreground, ignored and background anchors per level, on a log scale.

    counts: (L, 3) from :func:`fl_lab.analysis.count_assignments`.
    """
    counts = torch.as_tensor(counts)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    width = 0.27
    for k, kind in enumerate(ASSIGNMENT_KINDS):
        values = counts[:, k].numpy()
        bars = ax.bar(x + (k - 1) * width, np.maximum(values, 0.8), width, color=KIND_COLORS[kind], label=kind)
        ax.bar_label(bars, labels=[f"{int(v):,}" for v in values], fontsize="x-small")
    ax.set_yscale("log")
    ax.set_ylim(0.7, max(2.0, float(counts.max())) * 4)
    ax.set_xticks(x, list(names))
    ax.set(xlabel="pyramid level", ylabel="anchors (log scale)", title=title)
    ax.legend(loc="upper right")
    return fig


def coverage_figure(best_iou: dict[str, Tensor], imbalance: dict[str, float], fg_iou: float = 0.5,
                    bg_iou: float = 0.4, title: str = "Which regime does the data train in?") -> Figure:
    """Left: each object's best anchor IoU, one histogram per dataset setting, with the
    0.4 / 0.5 thresholds. Right: negative anchors per positive anchor of each setting (log scale).

    best_iou: {setting: (N,) best IoU of each object}; imbalance: {setting: negatives per positive}
    (both from :func:`fl_lab.analysis.anchor_coverage`).
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    hist, bars = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    bins = np.linspace(0, 1, 41)
    for i, (name, iou) in enumerate(best_iou.items()):
        values = torch.as_tensor(iou, dtype=torch.float64).numpy()
        below = float((values < fg_iou).mean()) if len(values) else 0.0
        hist.hist(values, bins=bins, histtype="step", lw=2, color=f"C{i}",
                  weights=np.full(len(values), 1 / max(len(values), 1)), label=f"{name}: {below:.0%} below {fg_iou:g}")
    hist.axvspan(0, bg_iou, color=KIND_COLORS["background"], alpha=0.12, label=f"< {bg_iou:g}: only background anchors")
    hist.axvspan(bg_iou, fg_iou, color=KIND_COLORS["ignored"], alpha=0.15, label="no foreground anchor")
    hist.set(xlabel="best IoU of an object with any anchor", ylabel="share of objects",
             title="how well the anchors fit the objects")
    hist.legend(loc="upper left", fontsize="small")
    names = list(imbalance)
    y = np.arange(len(names))[::-1]
    rects = bars.barh(y, [imbalance[n] for n in names], color=[f"C{i}" for i in range(len(names))], label="this data")
    bars.bar_label(rects, labels=[f"{imbalance[n]:,.0f} : 1" for n in names], fontsize="small", padding=3)
    bars.axvline(1000, color="black", ls="--", lw=1, label="the paper's example (1000 : 1, §3)")
    bars.set_xscale("log")
    bars.set_xlim(1, 30_000)
    bars.set_yticks(y, names)
    bars.set(xlabel="negatives per positive anchor (log scale)", title="the imbalance")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small")  # below: clear of the bar labels
    fig.suptitle(title)
    return fig
