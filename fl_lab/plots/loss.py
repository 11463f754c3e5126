"""Figures of lesson 01: the focal loss and where a batch's loss goes."""

from __future__ import annotations

from typing import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..analysis import GROUPS, GroupLoss
from ..loss import focal_loss, focal_loss_of_pt, focal_loss_star

__all__ = ["figure1", "focal_star_figure", "gradient_figure", "imbalance_figure", "loss_explorer_figure"]

GROUP_COLORS = {"positives": "tab:green", "hard negatives": "tab:orange", "easy negatives": "tab:blue"}
_P_T = torch.linspace(0.001, 0.999, 500, dtype=torch.float64)  # the x-axis of the loss curves


def figure1(gammas: Sequence[float] = (0, 0.5, 1, 2, 5)) -> Figure:
    """The paper's Figure 1: FL(p_t) against p_t for several γ (γ = 0 is CE)."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for gamma in gammas:
        label = f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else "")
        ax.plot(_P_T, focal_loss_of_pt(_P_T, gamma), label=label, lw=2)
    ax.axvspan(0.5, 1.0, color="0.92", zorder=0, label="well-classified examples (p_t > 0.5)")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 5),
        xlabel="probability of the ground-truth class, p_t",
        ylabel="loss",
        title="Focal loss FL(p_t) = -(1 - p_t)^γ log(p_t)  (paper Figure 1)",
    )
    ax.legend(loc="upper right")
    return fig


_X_T = torch.linspace(-5, 5, 401, dtype=torch.float64)  # the x-axis of the gradient and FL* curves


def _of_x_t(loss, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """A loss of one positive entry at each logit x_t of :data:`_X_T` (the kit's function), and its
    derivative dL/dx_t by autograd. A negative with logit x has x_t = -x: the same curves."""
    x_t = _X_T.clone().unsqueeze(1).requires_grad_()
    values = loss(x_t, torch.ones_like(x_t), reduction="none", **params)
    (grad,) = torch.autograd.grad(values.sum(), x_t)
    return values.detach().squeeze(1), grad.squeeze(1)


def gradient_figure(gammas: Sequence[float] = (0, 0.5, 1, 2, 5)) -> Figure:
    """Appendix B: the derivative of FL with respect to x_t, for several γ (γ = 0 is CE).

    Computed by autograd through :func:`fl_lab.loss.focal_loss` (α left out). x_t is the logit
    of the right answer (x for a positive, -x for a negative): large x_t is an easy example.
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for gamma in gammas:
        _, grad = _of_x_t(focal_loss, gamma=gamma, alpha=None)
        ax.plot(_X_T, grad, lw=2, label=f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else ""))
    ax.axvspan(0, 5, color="0.92", zorder=0, label="well classified (x_t > 0, p_t > 0.5)")
    ax.set(xlim=(-5, 5), ylim=(-1.15, 0.05), xlabel="x_t, the logit of the right answer",
           ylabel="dFL / dx_t", title="Gradient of the focal loss (paper Appendix B)")
    ax.legend(loc="lower right")
    return fig


def focal_star_figure(settings: Sequence[tuple[float, float]] = ((2.0, 1.0), (4.0, 0.0))) -> Figure:
    """Appendix A: FL*(γ, β) = -log σ(γ x_t + β) / γ beside CE and FL (γ = 2), against x_t.

    settings: (γ, β) pairs of FL* (the paper's Table 3 uses (2, 1) and (4, 0)).
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(_X_T, _of_x_t(focal_loss, gamma=0.0, alpha=None)[0], "--", color="0.5", lw=2, label="CE")
    ax.plot(_X_T, _of_x_t(focal_loss, gamma=2.0, alpha=None)[0], lw=2, label="FL, γ = 2")
    for gamma, beta in settings:
        ax.plot(_X_T, _of_x_t(focal_loss_star, gamma=gamma, beta=beta)[0], lw=2,
                label=f"FL*, γ = {gamma:g}, β = {beta:g}")
    ax.set(xlim=(-5, 5), ylim=(0, 5), xlabel="x_t, the logit of the right answer", ylabel="loss",
           title="FL* next to FL and CE (paper Appendix A)")
    ax.legend(loc="upper right")
    return fig


def loss_explorer_figure(gamma: float, alpha: float) -> Figure:
    """The loss for one γ and α, for a positive and a negative, and its modulating factor."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_mod = fig.subplots(1, 2)
    ax_loss.plot(_P_T, focal_loss_of_pt(_P_T, 0.0), "--", color="0.5", label="CE (γ = 0, no α)")
    ax_loss.plot(_P_T, focal_loss_of_pt(_P_T, gamma, alpha), lw=2, label=f"FL, a positive (α_t = α = {alpha:.2f})")
    ax_loss.plot(
        _P_T, focal_loss_of_pt(_P_T, gamma, 1 - alpha), lw=2, label=f"FL, a negative (α_t = 1 - α = {1 - alpha:.2f})"
    )
    ax_loss.set(xlim=(0, 1), ylim=(0, 5), xlabel="p_t", ylabel="loss", title=f"Loss, γ = {gamma:g}, α = {alpha:.2f}")
    ax_loss.legend(loc="upper right")

    factor = (1 - _P_T) ** gamma
    ax_mod.semilogy(_P_T, factor, lw=2, color="tab:purple", label=f"(1 - p_t)^γ, γ = {gamma:g}")
    at = 0.9
    f_at = (1 - at) ** gamma
    ax_mod.plot([at], [f_at], "o", color="black", label=f"p_t = {at}: loss × {f_at:.3g} ({1 / f_at:,.0f}× less)")
    ax_mod.set(
        xlim=(0, 1),
        ylim=(1e-6, 1.5),
        xlabel="p_t",
        ylabel="modulating factor (log scale)",
        title="How much FL shrinks CE",
    )
    ax_mod.legend(loc="lower left")
    return fig


def imbalance_figure(results: dict[str, dict[str, GroupLoss]]) -> Figure:
    """How many examples each group has, and which share of the loss it holds under each loss.

    results: {loss name: {group: GroupLoss}} as returned by :func:`fl_lab.analysis.loss_shares`.
    """
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_count, ax_share = fig.subplots(1, 2, width_ratios=(1, 2))
    first = next(iter(results.values()))
    counts = [first[g].count for g in GROUPS]
    bars = ax_count.bar(range(len(GROUPS)), counts, color=[GROUP_COLORS[g] for g in GROUPS], label=list(GROUPS))
    ax_count.bar_label(bars, labels=[f"{c:,}" for c in counts])
    ax_count.set_yscale("log")
    ax_count.set_ylim(1, max(counts) * 5)
    ax_count.set_xticks(range(len(GROUPS)), [g.replace(" ", "\n") for g in GROUPS])
    ax_count.set(xlabel="kind of example", ylabel="number of examples (log scale)", title="The batch")
    ax_count.legend(loc="upper left", fontsize="small")

    names = list(results)
    left = [0.0] * len(names)
    for g in GROUPS:
        shares = [results[n][g].share for n in names]
        ax_share.barh(names, shares, left=left, color=GROUP_COLORS[g], label=g)
        for i, (x0, s) in enumerate(zip(left, shares, strict=True)):
            if s >= 0.06:
                ax_share.text(x0 + s / 2, i, f"{s:.0%}", ha="center", va="center", color="white", weight="bold")
        left = [x0 + s for x0, s in zip(left, shares, strict=True)]
    ax_share.invert_yaxis()
    ax_share.set(xlim=(0, 1), xlabel="share of the total loss", ylabel="loss", title="Who holds the loss")
    ax_share.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncols=3, fontsize="small")
    return fig


def loss_share_figure(runs: dict[str, list[dict]], total_steps: int, title: str = "Where the loss goes") -> Figure:
    """One panel per training run: the share of each batch's classification loss held by positives,
    hard and easy negatives against the iteration, stacked to 1.

    runs: {run name: rows of :class:`fl_lab.analysis.LossShareMonitor` ({"step", and a share per group})};
    an empty list draws an empty panel (a live run that has not measured yet).
    """
    fig = Figure(figsize=(5.5 * len(runs), 3.8), layout="constrained")
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False)[0]
    for ax, (name, rows) in zip(axes, runs.items(), strict=True):
        if rows:
            ax.stackplot([r["step"] for r in rows], *[[r[g] for r in rows] for g in GROUPS],
                         colors=[GROUP_COLORS[g] for g in GROUPS], labels=list(GROUPS), alpha=0.85)
        ax.set(xlim=(0, total_steps), ylim=(0, 1), xlabel="iteration", title=name)
        ax.legend(loc="lower left", fontsize="small", handles=[
            Patch(color=GROUP_COLORS[g], label=g) for g in GROUPS])
    axes[0].set_ylabel("share of the batch's classification loss")
    fig.suptitle(title)
    return fig
