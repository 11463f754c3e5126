"""Figures of the FL-vs-CE study (lesson 06, results/fl_vs_ce): seeded AP against one factor."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ..analysis import paired_difference

__all__ = ["gap_figure"]


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, sem


def gap_figure(points: Sequence[tuple[float, Sequence[float], Sequence[float]]], xlabel: str, title: str,
               names: tuple[str, str] = ("FL γ = 2, α = .25", "α-CE, α = .75"), log_x: bool = False,
               joined: bool = True) -> Figure:
    """Left: each arm's AP (×100, mean ± one standard error over seeds) against a factor.
    Right: the gap seed by seed — each seed's difference (first minus second) as a dot, and the
    mean difference with its 95 % t interval (n − 1 degrees of freedom:
    :func:`fl_lab.analysis.paired_difference`). An interval clear of zero is a difference beyond
    the noise, the rule every claim of the kit uses.

    points: one (factor value, first arm's AP per seed, second arm's AP per seed) per row; the two
    lists in the same seed order, and the i-th value of every row from the same seed (a row may
    have more). joined: one seed's dots joined across the factor — only where the rows share that
    seed's data (a longer schedule, another learning rate), not where the factor draws other data
    (another canvas or object count), which a line would pretend to pair.
    """
    points = sorted(points, key=lambda p: p[0])
    xs = [p[0] for p in points]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    arms, gap = fig.subplots(1, 2)
    for i, name in enumerate(names):
        stats = [_mean_sem(p[1 + i]) for p in points]
        arms.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o", capsize=4,
                      color=f"C{i}", label=name)
    per_seed = [[100 * (x - y) for x, y in zip(a, b, strict=True)] for _, a, b in points]
    for i in range(max(len(d) for d in per_seed)):
        seen = [(x, d[i]) for x, d in zip(xs, per_seed, strict=True) if i < len(d)]
        gap.plot([x for x, _ in seen], [v for _, v in seen], "o-" if joined else "o", color="0.65", lw=0.8, ms=4,
                 label=("one seed's difference" if joined else "one seed's difference (rows draw other data)")
                 if i == 0 else None)
    paired = [(x, paired_difference(a, b)) for x, a, b in points if len(a) > 1]
    gap.axhline(0, color="black", lw=1, label="no difference")
    gap.errorbar([x for x, _ in paired], [100 * d.mean for _, d in paired],
                 yerr=[[100 * (d.mean - d.low) for _, d in paired], [100 * (d.high - d.mean) for _, d in paired]],
                 fmt="s", capsize=5, color="C2", ms=7, label=f"{names[0]} − {names[1]}: mean, 95 % t interval")
    seeds = sorted({len(p[1]) for p in points} | {len(p[2]) for p in points})
    arms.set(xlabel=xlabel, ylabel="AP (×100) on Shapes validation",
             title=f"each loss (mean ± 1 SE, {'/'.join(map(str, seeds))} seeds)")
    gap.set(xlabel=xlabel, ylabel="AP difference (×100)",
            title="the gap seed by seed (above 0: the focal loss wins)")
    for ax in (arms, gap):
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(xs, [f"{x:,.0f}" for x in xs])
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    return fig
