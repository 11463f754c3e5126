"""Thin ipywidgets wrappers around :mod:`fl_lab.plots`: sliders in, a redrawn figure out.

All the logic lives in :mod:`fl_lab.plots` and :mod:`fl_lab.analysis`; a widget only reads
its sliders and calls them. Sliders redraw on release (``continuous_update=False``).
"""

from __future__ import annotations

import ipywidgets as W
from IPython.display import display
from torch import Tensor

from . import analysis, plots

__all__ = ["focal_loss_explorer", "imbalance_explorer"]


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
