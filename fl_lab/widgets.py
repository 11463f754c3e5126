"""Thin ipywidgets wrappers around :mod:`fl_lab.plots`: sliders in, a redrawn figure out.

All the logic lives in :mod:`fl_lab.plots` and :mod:`fl_lab.analysis`; a widget only reads
its sliders and calls them. Sliders redraw on release (``continuous_update=False``).
"""

from __future__ import annotations

import ipywidgets as W
import torch
from IPython.display import display
from torch import Tensor

from . import analysis, plots
from .anchors import AnchorGenerator, level_names
from .boxes import box_iou_batched
from .matcher import Matcher

__all__ = ["anchor_explorer", "cdf_explorer", "focal_loss_explorer", "gradient_explorer", "imbalance_explorer",
           "loss_share_panel", "matching_explorer"]


def _slider(description: str, value: float, low: float, high: float, step: float) -> W.FloatSlider:
    return W.FloatSlider(
        value=value,
        min=low,
        max=high,
        step=step,
        description=description,
        continuous_update=False,
        readout_format=".2f",
        style={"description_width": "2em"},
    )


def _gamma_alpha_sliders(gamma: float, alpha: float) -> dict[str, W.FloatSlider]:
    return {"gamma": _slider("γ", gamma, 0.0, 5.0, 0.1), "alpha": _slider("α", alpha, 0.0, 1.0, 0.05)}


def focal_loss_explorer(gamma: float = 2.0, alpha: float = 0.25) -> W.VBox:
    """Sliders for γ and α over :func:`fl_lab.plots.loss_explorer_figure`."""
    sliders = _gamma_alpha_sliders(gamma, alpha)

    def render(gamma: float, alpha: float) -> None:
        display(plots.loss_explorer_figure(gamma, alpha))

    return W.VBox([W.HBox(list(sliders.values())), W.interactive_output(render, sliders)])


def gradient_explorer(gamma: float = 2.0) -> W.VBox:
    """A γ slider over :func:`fl_lab.plots.gradient_figure`: CE's gradient beside FL's at the slider's γ."""
    slider = _slider("γ", gamma, 0.0, 5.0, 0.1)

    def render(gamma: float) -> None:
        display(plots.gradient_figure((0.0, gamma)))

    return W.VBox([slider, W.interactive_output(render, {"gamma": slider})])


def imbalance_explorer(logits: Tensor, target: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> W.VBox:
    """Sliders for γ and α over the loss shares of a batch (logits (N, K), target (N,)).

    Compares plain CE, α-balanced CE with the slider's α, and FL with the slider's γ and α.
    """
    sliders = _gamma_alpha_sliders(gamma, alpha)

    def render(gamma: float, alpha: float) -> None:
        settings = [
            analysis.LossSetting(0.0, None),
            analysis.LossSetting(0.0, alpha),
            analysis.LossSetting(gamma, alpha),
        ]
        results = analysis.compare_losses(logits, target, settings)
        print(analysis.format_shares(results))
        display(plots.imbalance_figure(results))

    return W.VBox([W.HBox(list(sliders.values())), W.interactive_output(render, sliders)])


def anchor_explorer(image, generator: AnchorGenerator) -> W.VBox:
    """Pick a level, aspect ratio and scale; see that anchor at every location of its level."""
    controls = {
        "level": W.Dropdown(
            options=[(n, i) for i, n in enumerate(level_names(generator))], value=0, description="level"
        ),
        "ratio_index": W.Dropdown(
            options=[(f"{r:g}", i) for i, r in enumerate(generator.aspect_ratios)], value=0, description="h/w"
        ),
        "scale_index": W.Dropdown(
            options=[(f"{s:.2f}", j) for j, s in enumerate(generator.scales)], value=0, description="scale"
        ),
    }

    def render(level: int, ratio_index: int, scale_index: int) -> None:
        display(plots.anchor_grid_figure(image, generator, level, ratio_index, scale_index))

    return W.VBox([W.HBox(list(controls.values())), W.interactive_output(render, controls)])


def matching_explorer(image, generator: AnchorGenerator, gt_boxes: Tensor) -> W.VBox:
    """Move the foreground and background IoU thresholds; watch the anchors' labels change.

    gt_boxes: (G, 4) of the image. Low-quality matches are those the strict rule would not make.
    """
    size = tuple(image.shape[:2])
    anchors, levels = generator.gen(size), generator.level_of(size)
    iou = box_iou_batched(gt_boxes.unsqueeze(0).float(), anchors)[0]
    sliders = {"fg_iou": _slider("fg", 0.5, 0.05, 0.95, 0.05), "bg_iou": _slider("bg", 0.4, 0.0, 0.95, 0.05)}
    for s in sliders.values():
        s.style = {"description_width": "1.5em"}

    def render(fg_iou: float, bg_iou: float) -> None:
        if bg_iou > fg_iou:
            print(f"The background threshold ({bg_iou:.2f}) must not exceed the foreground one ({fg_iou:.2f}).")
            return
        matches = Matcher(fg_iou, bg_iou)(iou)
        strict = Matcher(fg_iou, bg_iou, allow_low_quality=False)(iou)
        labels = torch.where(matches >= 0, 0, matches)  # one class: only fg / ignored / bg matter here
        counts = analysis.count_assignments(labels, levels, len(generator.strides)).sum(0).tolist()
        print("foreground {:,} · ignored {:,} · background {:,}".format(*counts))
        display(plots.assignment_figure(image, anchors, levels, labels, gt_boxes, (matches >= 0) & (strict < 0),
                                        level_names(generator)))

    return W.VBox([W.HBox(list(sliders.values())), W.interactive_output(render, sliders)])


def cdf_explorer(result: analysis.LossCDF, gamma: float = 2.0) -> W.VBox:
    """A γ slider over Figure 4, recomputed from the stored samples (no new inference).

    Draws CE (γ = 0) for reference and the slider's γ, and prints the shares of the loss
    held by the hardest samples at that γ.
    """
    slider = _slider("γ", gamma, 0.0, 5.0, 0.1)

    def render(gamma: float) -> None:
        for kind in analysis.CDF_KINDS:
            top = analysis.hardest_share(result.losses(kind, gamma), 0.2)
            print(f"γ = {gamma:.1f}: the hardest 20% of {kind} hold {top:.1%} of their loss")
        display(plots.cdf_figure(result, gammas=(0.0, gamma) if gamma != 0 else (0.0,)))

    return W.VBox([slider, W.interactive_output(render, {"gamma": slider})])


def loss_share_panel(live: str, setting: analysis.LossSetting, total_steps: int, reference: dict[str, list[dict]],
                     every: int = 10, redraw_every: int = 3) -> analysis.LossShareMonitor:
    """A live figure of where the classification loss goes while a model trains, beside committed runs.

    Returns the :class:`fl_lab.analysis.LossShareMonitor` to pass to ``fl_lab.train.run(config,
    monitor=...)``: every ``every`` iterations it measures the batch's loss shares under ``setting``;
    every ``redraw_every`` measurements, and at the last one, it redraws the figure
    (:func:`fl_lab.plots.loss_share_figure`), the run ``live`` first and the ``reference`` runs
    (name: monitor rows) beside it — a redraw costs about as much as a training step of the lessons'
    regime on a CPU, so not every measurement is drawn. The figure is a plain display, not a widget:
    it updates in place, and a saved notebook keeps its last frame.
    """
    handle = None

    def draw(rows: list[dict]) -> None:
        nonlocal handle
        last = bool(rows) and rows[-1]["step"] + every >= total_steps
        if rows and len(rows) % redraw_every and not last:
            return
        fig = plots.loss_share_figure({live: rows, **reference}, total_steps,
                                      title="Share of the classification loss, batch by batch")
        if handle is None:
            handle = display(fig, display_id=True)
        else:
            handle.update(fig)

    draw([])
    return analysis.LossShareMonitor(setting, every=every, on_row=draw)
