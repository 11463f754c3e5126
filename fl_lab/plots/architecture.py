"""The paper's Figure 3 drawn for a real model (lesson 03): ResNet, FPN's top-down path, the two subnets."""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

_STYLE = {"lateral": ("tab:blue", "-"), "top-down": ("tab:orange", "--"), "stride-2 conv": ("tab:green", "-"),
          "subnet": ("0.4", ":")}


def _box(ax, x: float, y: float, text: str, color: str, width: float = 1.7, height: float = 0.62) -> None:
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.02",
                                facecolor=color, edgecolor="0.25", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=8)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], kind: str, bend: float = 0.0) -> None:
    color, style = _STYLE[kind]
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color, ls=style, lw=1.3,
                                 shrinkA=2, shrinkB=2, connectionstyle=f"arc3,rad={bend}"))


def architecture_figure(levels: Sequence[dict], title: str = "RetinaNet (the paper's Figure 3)") -> Figure:
    """Each level's maps as boxes with their shapes (``levels``: :func:`fl_lab.architecture.level_shapes`):
    the ResNet's C3–C5 on the left, the pyramid's P3–P7 in the middle, the class and box subnets'
    outputs on the right; arrows for FPN's lateral 1×1 convs, its top-down ×2 upsampling, the
    stride-2 convs that make P6 and P7, and the subnets (shared by every level)."""
    def shape(s) -> str:
        return " × ".join(map(str, s))

    fig = Figure(figsize=(11, 6.2), layout="constrained")
    ax = fig.subplots()
    xs = {"C": 0.0, "P": 2.6, "class": 5.4, "box": 7.5}
    for y, level in enumerate(levels):
        name = level["level"]
        if level["C"] is not None:
            _box(ax, xs["C"], y, f"C{name[1:]}  {shape(level['C'])}", "#dbe8f6")
            _arrow(ax, (xs["C"] + 0.85, y), (xs["P"] - 0.85, y), "lateral")
        _box(ax, xs["P"], y, f"{name}  {shape(level['P'])}\nstride {level['stride']}", "#fde9d3")
        _box(ax, xs["class"], y, f"class {shape(level['class'])}", "#e4f2df", width=1.9)
        _box(ax, xs["box"], y, f"box {shape(level['box'])}", "#efe4f4", width=1.7)
        _arrow(ax, (xs["P"] + 0.85, y), (xs["class"] - 0.95, y), "subnet")
        _arrow(ax, (xs["P"] + 0.85, y + 0.15), (xs["box"] - 0.85, y + 0.15), "subnet", bend=-0.08)  # over the class box
    with_c = [y for y, level in enumerate(levels) if level["C"] is not None]
    for y in with_c[1:]:  # top-down: P5 -> P4 -> P3, upsampled ×2 and added to the lateral
        _arrow(ax, (xs["P"] - 0.35, y - 0.31), (xs["P"] - 0.35, y - 0.69), "top-down")
    top = with_c[-1]
    _arrow(ax, (xs["C"] + 0.4, top + 0.31), (xs["P"] - 0.85, top + 1), "stride-2 conv")  # P6 from C5
    for y in range(top + 1, len(levels) - 1):
        _arrow(ax, (xs["P"] + 0.35, y + 0.31), (xs["P"] + 0.35, y + 0.69), "stride-2 conv")  # P7 from P6
    ax.set(xlim=(-1.1, 8.6), ylim=(-0.7, len(levels) - 0.2), xticks=list(xs.values()),
           xticklabels=["ResNet (C)", "FPN (P)", "class subnet out\n(A·K per cell)", "box subnet out\n(A·4 per cell)"],
           yticks=range(len(levels)), yticklabels=[f"{lv['level']} (stride {lv['stride']})" for lv in levels],
           xlabel="stage of the network (data flows left to right)", ylabel="pyramid level (coarser upwards)",
           title=title)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    labels = {"lateral": "lateral 1×1 conv (to the pyramid's channels)",
              "top-down": "top-down: ×2 nearest upsample, added",
              "stride-2 conv": "3×3 stride-2 conv (P6 from C5, P7 from P6)",
              "subnet": "subnet: 3×3 convs, the same weights on every level"}
    handles = [Line2D([], [], color=_STYLE[k][0], ls=_STYLE[k][1], lw=1.5, label=text) for k, text in labels.items()]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    return fig
