"""fl_lab.plots: every figure has a title, axis labels and a legend, and draws the right data."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from fl_lab import plots
from fl_lab.analysis import LossSetting, compare_losses, simulate_anchor_batch
from fl_lab.loss import focal_loss_of_pt


def assert_labelled(fig: Figure, n_axes: int):
    assert isinstance(fig, Figure) and len(fig.axes) == n_axes
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel(), ax
        assert ax.get_legend() is not None, ax
    fig.canvas.draw()  # renders without error


def test_figure1_draws_one_curve_per_gamma():
    gammas = (0, 0.5, 1, 2, 5)
    fig = plots.figure1(gammas)
    assert_labelled(fig, 1)
    lines = fig.axes[0].get_lines()
    assert len(lines) == len(gammas)
    for line, gamma in zip(lines, gammas):
        x, y = line.get_data()
        np.testing.assert_allclose(y, focal_loss_of_pt(torch.as_tensor(x), gamma).numpy())
        assert f"γ = {gamma:g}" in line.get_label()


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, 0.5), (5.0, 0.9)])
def test_loss_explorer_figure(gamma, alpha):
    fig = plots.loss_explorer_figure(gamma, alpha)
    assert_labelled(fig, 2)
    ce, pos, neg = fig.axes[0].get_lines()
    np.testing.assert_allclose(pos.get_data()[1], alpha * ce.get_data()[1] * (1 - pos.get_data()[0]) ** gamma)
    np.testing.assert_allclose(neg.get_data()[1], (1 - alpha) * ce.get_data()[1] * (1 - neg.get_data()[0]) ** gamma)
    assert f"γ = {gamma:g}" in fig.axes[0].get_title()


def test_imbalance_figure_shows_counts_and_shares():
    logits, target = simulate_anchor_batch(num_anchors=2000, num_positives=4)
    results = compare_losses(logits, target, [LossSetting(0, None), LossSetting(2, 0.25)])
    fig = plots.imbalance_figure(results)
    assert_labelled(fig, 2)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [g.count for g in results["CE"].values()]
    widths = [p.get_width() for p in fig.axes[1].patches]  # group-major: 2 bars per group
    np.testing.assert_allclose(widths[0::2], [g.share for g in results["CE"].values()])
    np.testing.assert_allclose(sum(widths), 2.0)
