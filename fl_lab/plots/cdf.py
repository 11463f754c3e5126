"""Figure of lesson 05: the paper's Figure 4, cumulative distributions of the focal loss."""

from __future__ import annotations

from typing import Optional, Sequence

from matplotlib.figure import Figure

from ..analysis import CDF_KINDS, LossCDF

__all__ = ["cdf_figure"]

_TITLES = {"positives": "positive samples", "negatives": "negative samples"}


def cdf_figure(result: LossCDF, gammas: Optional[Sequence[float]] = None, title: Optional[str] = None) -> Figure:
    """Figure 4: for each γ, the normalised loss of positives (left) and negatives (right),
    sorted from easiest to hardest and cumulated, against the fraction of samples.

    gammas: the curves to draw (default ``result.gammas``). A curve that hugs the x-axis and
    jumps at the right end means a few hard samples hold almost all of the loss.
    """
    gammas = result.gammas if gammas is None else tuple(gammas)
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, CDF_KINDS, strict=True):
        count = (result.positives if kind == "positives" else result.negatives).numel()
        for gamma in gammas:
            fraction, cdf = result.curve(kind, gamma)
            ax.plot(fraction, cdf, lw=2, label=f"γ = {gamma:g}" + (" (CE)" if gamma == 0 else ""))
        ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="equal loss per sample")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"fraction of {kind} ({count:,} samples)",
               title=f"{_TITLES[kind]}")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("cumulative normalised loss")
    fig.suptitle(title or "Cumulative distribution of the focal loss (paper Figure 4)")
    return fig
