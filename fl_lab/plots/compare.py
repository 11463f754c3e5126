"""Figure of lesson 07: accuracy against inference time, in the style of the paper's Figure 2."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from ..compare import PAPER_SPEED, Entry

__all__ = ["figure2"]


def figure2(entries: Sequence[Entry], title: str = "Speed against accuracy (paper Figure 2)") -> Figure:
    """Left: our detectors, AP (×100) against ms per image; RetinaNet's sizes joined by a line.
    Right: the paper's RetinaNet R50 and R101 curves (Table 1e, COCO test-dev, Nvidia M40).

    Up and to the left is better in both. The panels have their own scales (a CPU or GPU of
    today on Shapes, a 2017 GPU on COCO): compare the shapes and orderings, not the numbers.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ours, paper = fig.subplots(1, 2)
    names = list(dict.fromkeys(e.name for e in entries))
    for i, name in enumerate(names):
        points = sorted((e.ms_per_image, 100 * e.metrics["AP"], e.image_size) for e in entries if e.name == name)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ours.plot(xs, ys, marker="o", linestyle="-" if len(points) > 1 else "none", color=f"C{i}", label=name)
        for x, y, size in points:
            ours.annotate(f"{size}px", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ours.set(title="this run (Shapes)", xlabel="inference time (ms per image)", ylabel="AP (×100)")
    ours.legend(loc="best", fontsize=8)
    for i, (backbone, points) in enumerate(PAPER_SPEED.items()):
        paper.plot([p[2] for p in points], [p[1] for p in points], marker="o", color=f"C{i}", label=f"RetinaNet {backbone}")
        for size, ap, ms in points:
            paper.annotate(f"{size}", (ms, ap), textcoords="offset points", xytext=(4, -10), fontsize=8)
    paper.set(title="the paper (COCO test-dev, Nvidia M40)", xlabel="inference time (ms per image)", ylabel="COCO AP")
    paper.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return fig
