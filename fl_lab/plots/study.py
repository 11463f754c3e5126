"""Figures of the FL-vs-CE study (lesson 06, results/fl_vs_ce): seeded AP against one factor."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

__all__ = ["gap_figure"]


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, sem


def gap_figure(points: Sequence[tuple[float, Sequence[float], Sequence[float]]], xlabel: str, title: str,
               names: tuple[str, str] = ("FL γ = 2, α = .25", "α-CE, α = .75"), log_x: bool = False) -> Figure:
    """Left: each arm's AP (×100, mean ± one standard error over seeds) against a factor.
    Right: their difference, first minus second, with bars of ± 2 standard errors of the
    difference — a bar clear of zero is a difference beyond the noise.

    points: one (factor value, first arm's AP per seed, second arm's AP per seed) per row.
    """
    points = sorted(points, key=lambda p: p[0])
    xs = [p[0] for p in points]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    arms, gap = fig.subplots(1, 2)
    for i, name in enumerate(names):
        stats = [_mean_sem(p[1 + i]) for p in points]
        arms.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o", capsize=4,
                      color=f"C{i}", label=name)
    diffs = [(_mean_sem(a), _mean_sem(b)) for _, a, b in points]
    means = [100 * (a[0] - b[0]) for a, b in diffs]
    bars = [200 * math.sqrt(a[1] ** 2 + b[1] ** 2) for a, b in diffs]
    gap.axhline(0, color="black", lw=1, label="no difference")
    gap.errorbar(xs, means, yerr=bars, marker="o", capsize=4, color="C2", label=f"{names[0]} − {names[1]} (± 2 SE)")
    seeds = sorted({len(p[1]) for p in points} | {len(p[2]) for p in points})
    arms.set(xlabel=xlabel, ylabel="AP (×100) on Shapes validation",
             title=f"each loss (mean ± 1 SE, {'/'.join(map(str, seeds))} seeds)")
    gap.set(xlabel=xlabel, ylabel="AP difference (×100)", title="the gap (above 0: the focal loss wins)")
    for ax in (arms, gap):
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(xs, [f"{x:,.0f}" for x in xs])
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    return fig
