"""Figures of lesson 03: a batch of the dataset with its boxes, and training curves."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from .anchors import _draw


def dataset_figure(images: Sequence[Tensor], targets: Sequence[dict], class_names: Sequence[str], columns: int = 4,
                   title: str = "A batch of the dataset") -> Figure:
    """Images (3, H, W) in [0, 1] with their ``targets[i]["boxes"]``, coloured by class."""
    rows = math.ceil(len(images) / columns)
    fig = Figure(figsize=(3 * columns, 3 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, image, target in zip(axes, images, targets, strict=False):  # a last row may have spare axes
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, image.shape[2], image.shape[1], 0))
        for k in range(len(class_names)):
            _draw(ax, target["boxes"][target["labels"] == k], color=f"C{k % 10}", lw=1.5)
        n = len(target["boxes"])
        ax.set(title=f"{n} object{'s' * (n != 1)}", xlabel="x (pixels)", ylabel="y (pixels)")
    for ax in axes[len(images):]:
        ax.axis("off")
    handles = [Line2D([], [], color=f"C{k % 10}", lw=2, label=name) for k, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(class_names), 8))
    fig.suptitle(title)
    return fig


def training_curves_figure(histories: Mapping[str, Sequence[dict]], key: str = "total", total_steps: int | None = None,
                           title: str = "Training loss") -> Figure:
    """One line per run: ``history[i][key]`` against the step, on a log scale.

    A history is every step's row or a log's (every few steps, and always the last one run), so a
    run that did not reach step ``total_steps - 1`` stopped early — it diverged — and ends in a red ×.
    """
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, history in histories.items():
        steps, values = [r["step"] for r in history], [r[key] for r in history]
        (line,) = ax.plot(steps, values, label=name)
        if total_steps is not None and (not steps or steps[-1] < total_steps - 1):
            ax.plot(steps[-1:], values[-1:], "x", color="red", ms=12, mew=3)
            line.set_label(f"{name} — diverged after step {steps[-1] if steps else 'none'}")
    ax.set(yscale="log", xlabel="iteration", ylabel=f"loss ({key})", title=title)
    if total_steps is not None:
        ax.set_xlim(0, total_steps)
    ax.legend()
    return fig


def training_log_figure(rows: Sequence[dict], title: str = "Training log") -> Figure:
    """A run's ``log.jsonl`` rows: classification and box loss (left), learning rate (right)."""
    rows = [r for r in rows if "step" in r]
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(11, 4), layout="constrained")
    losses, lr = fig.subplots(1, 2)
    for key, name in (("cls", "classification (focal) loss"), ("box", "box regression loss"), ("total", "total")):
        losses.plot(steps, [r[key] for r in rows], label=name, lw=2 if key == "total" else 1)
    losses.set(yscale="log", xlabel="iteration", ylabel="loss (÷ foreground anchors)", title="Loss")
    losses.legend()
    lr.plot(steps, [r["lr"] for r in rows], color="tab:purple", label="learning rate")
    lr.set(xlabel="iteration", ylabel="learning rate", title="Schedule: warm-up, then ÷10 at 2/3 and 8/9")
    lr.legend()
    fig.suptitle(title)
    return fig
