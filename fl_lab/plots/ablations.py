"""Figure of lesson 06: Table 1 at small scale, our AP beside the paper's."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from matplotlib.figure import Figure

__all__ = ["ablations_figure"]


def ablations_figure(rows: Sequence[dict], title: str = "Table 1 at small scale") -> Figure:
    """Horizontal bars, one per row of the table: our AP (left, mean over seeds with ± 1 standard
    error and each seed as a dot, one seed's dots joined down each group: the rows share their
    seeds, so a seed that is low in every row is the data's, not the setting's) and the paper's AP
    (right, COCO).

    rows: dicts with ``name``, ``group`` (Table 1's part), ``ap`` (AP of each seed, 0-1),
    ``paper`` (the paper's AP or None) and ``diverged`` (how many seeds diverged) — what
    :func:`fl_lab.ablations.figure_rows` gives. The panels have their own scales — minutes on
    Shapes against 90k iterations on COCO — so compare the *order* of the rows, not the
    lengths across panels. A row with a diverged seed is marked with a red ×.
    """
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    ys = list(range(len(rows)))[::-1]  # first row on top
    fig = Figure(figsize=(11, 0.42 * len(rows) + 1.8), layout="constrained")
    ours, paper = fig.subplots(1, 2, sharey=True)
    labelled = set()
    for y, r in zip(ys, rows, strict=True):
        values = [100 * v for v in r["ap"]]
        mean = statistics.fmean(values)
        sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        label = r["group"] if r["group"] not in labelled else None
        labelled.add(r["group"])
        ours.barh(y, mean, xerr=sem, color=colors[r["group"]], label=label, capsize=3)
        ours.plot(values, [y] * len(values), "o", color="black", ms=3, label="one seed" if y == ys[0] else None)
        if r["diverged"]:
            ours.plot(0, y, "x", color="red", ms=10, mew=3)
        if r["paper"] is not None:
            paper.barh(y, r["paper"], color=colors[r["group"]])
    joined = [[(y, r["ap"]) for y, r in zip(ys, rows, strict=True) if r["group"] == g] for g in groups]
    joined = [members for members in joined if len(members) > 1]  # a group of one row has nothing to join
    for k, members in enumerate(joined):  # the rows share their seeds: join one seed's dots down its group
        for i in range(min(len(ap) for _, ap in members)):
            ours.plot([100 * ap[i] for _, ap in members], [y for y, _ in members], "-", color="0.3", lw=0.6,
                      label="one seed, joined down its group" if k == 0 and i == 0 else None)
    ours.set(yticks=ys, yticklabels=[r["name"] for r in rows], xlabel="AP (×100) on Shapes, this kit (mean ± 1 SE)",
             title="this kit")
    paper.set(xlabel="AP on COCO minival (paper Table 1)", title="paper")
    if any(r["diverged"] for r in rows):
        ours.plot([], [], "x", color="red", ms=10, mew=3, label="a seed diverged")
    fig.legend(loc="outside lower center", ncol=4, fontsize="small")  # below: the bars fill the axes
    fig.suptitle(title)
    return fig
