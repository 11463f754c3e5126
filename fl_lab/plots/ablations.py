"""Figure of lesson 06: Table 1 at small scale, our AP beside the paper's."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from ..ablations import AblationResult

__all__ = ["ablations_figure"]


def ablations_figure(results: Sequence[AblationResult], title: str = "Table 1 at small scale") -> Figure:
    """Horizontal bars, one row per run: our AP (left) and the paper's AP (right, COCO).

    The two panels have their own scales -- a few minutes on Shapes against 90k iterations on
    COCO -- so compare the *order* of the rows, not the lengths across panels. Bars are coloured
    by Table 1's part; a run that diverged is marked with a red ×, a row without a paper number
    is left empty on the right.
    """
    groups = list(dict.fromkeys(r.ablation.group for r in results))
    colors = {g: f"C{i}" for i, g in enumerate(groups)}
    rows = list(range(len(results)))[::-1]  # first run on top
    fig = Figure(figsize=(11, 0.42 * len(results) + 1.8), layout="constrained")
    ours, paper = fig.subplots(1, 2, sharey=True)
    for y, r in zip(rows, results):
        color = colors[r.ablation.group]
        label = r.ablation.group if r is next(x for x in results if x.ablation.group == r.ablation.group) else None
        ours.barh(y, 100 * r.ap, color=color, label=label)
        if r.diverged_at is not None:
            ours.plot(0, y, "x", color="red", ms=10, mew=3)
        if r.ablation.paper:
            paper.barh(y, r.ablation.paper[0], color=color)
    ours.set(yticks=rows, yticklabels=[r.ablation.name for r in results], xlabel="AP (×100) on Shapes, this kit",
             title="this kit")
    paper.set(xlabel="AP on COCO minival (paper Table 1)", title="paper")
    if any(r.diverged_at is not None for r in results):
        ours.plot([], [], "x", color="red", ms=10, mew=3, label="diverged")
    ours.legend(loc="lower right", fontsize="small")
    fig.suptitle(title)
    return fig
