"""Figure of lesson 07: accuracy against inference time, in the style of the paper's Figure 2."""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from matplotlib.figure import Figure

__all__ = ["figure2"]


def figure2(points: Sequence[dict], paper_speed: dict[str, Sequence[tuple[int, float, float]]],
            title: str = "Speed against accuracy (paper Figure 2)") -> Figure:
    """Left: our detectors, AP (×100, mean over seeds, ± 1 standard error) against ms per image;
    RetinaNet's sizes joined by a line. Right: the paper's RetinaNet curves (Table 1e, COCO
    test-dev, Nvidia M40).

    points: dicts with ``name``, ``image_size``, ``ap`` (AP of each seed, 0-1) and ``ms``
    (:func:`fl_lab.compare.figure2_points` gives them); paper_speed: {backbone: [(size, AP, ms)]}
    (:data:`fl_lab.compare.PAPER_SPEED`).

    Up and to the left is better in both. The panels have their own scales (a CPU or GPU of
    today on Shapes, a 2017 GPU on COCO): compare the shapes and orderings, not the numbers.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ours, paper = fig.subplots(1, 2)
    names = list(dict.fromkeys(p["name"] for p in points))
    for i, name in enumerate(names):
        mine = sorted((p["ms"], [100 * v for v in p["ap"]], p["image_size"]) for p in points if p["name"] == name)
        xs = [m[0] for m in mine]
        ys = [statistics.fmean(m[1]) for m in mine]
        errors = [statistics.stdev(m[1]) / math.sqrt(len(m[1])) if len(m[1]) > 1 else 0.0 for m in mine]
        ours.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, linestyle="-" if len(mine) > 1 else "none",
                      color=f"C{i}", label=name)
        for x, y, size in zip(xs, ys, (m[2] for m in mine), strict=True):
            ours.annotate(f"{size}px", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ours.set(title="this run (Shapes)", xlabel="inference time (ms per image)", ylabel="AP (×100, mean ± 1 SE)")
    ours.legend(loc="best", fontsize=8)
    for i, (backbone, points) in enumerate(paper_speed.items()):
        paper.plot([p[2] for p in points], [p[1] for p in points], marker="o", color=f"C{i}",
                   label=f"RetinaNet {backbone}")
        for size, ap, ms in points:
            paper.annotate(f"{size}", (ms, ap), textcoords="offset points", xytext=(4, -10), fontsize=8)
    paper.set(title="the paper (COCO test-dev, Nvidia M40)", xlabel="inference time (ms per image)", ylabel="COCO AP")
    paper.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return fig
