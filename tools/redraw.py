"""Redraw the figures of committed results from their JSON alone, with the kit's current plots.

    python tools/redraw.py            # rewrites the figures of every study listed in FIGURES

Nothing trains: each study's runs are read back from its JSON and drawn by the same function its
command line calls when it writes ``results/`` (so a figure redrawn here is the one a rerun would draw).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fl_lab import ablations, study

ROOT = Path(__file__).resolve().parents[1]


def _table1(path: Path) -> list[Path]:
    saved = json.loads(path.read_text())
    results = ablations.load_results(path)
    confirmed = ablations.load_results(path, confirmed=True) if "confirmed" in saved else []
    seeds = max(len(r.runs) for r in results)
    grid = ablations.save_figure(results, path.parent, saved["device"], seeds, confirmed)
    return [grid, *([grid.with_name("table1_confirmed.png")] if confirmed else [])]


FIGURES = {  # results file -> how its figures are drawn into its folder
    "results/table1_cpu/table1.json": _table1,
    "results/table1_cpu/earlier_backbone/table1.json": _table1,
    "results/table1_cpu/from_scratch/table1.json": _table1,
    "results/fl_vs_ce/study.json": lambda p: study.save_gap_figures(study.load_results(p), p.parent),
    "results/fl_vs_ce/schedule/study.json": lambda p: study.save_gap_figures(study.load_results(p), p.parent),
}


def main() -> int:
    for name, draw in FIGURES.items():
        for figure in draw(ROOT / name):
            print(f"redrew {figure.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
