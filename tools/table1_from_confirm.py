"""Place ``results/confirm``'s finished runs where Table 1's grid on the lessons' backbone expects them.

``python -m fl_lab.ablations --backbone-weights shapes --confirm`` trains its rows on the lessons'
regime, and four of them (FL γ = 2 α = .25; α-CE α = .5, .75, .9) are configurations
``results/confirm`` already trained on the same seeds (the same backbone: a retrained run reproduced
its metrics bit for bit). This writes those runs' records into the grid's run folders, so the grid
reads them back instead of training them again (:func:`fl_lab.experiment.run_once` compares each
record's configuration with the one it would train):

    python tools/table1_from_confirm.py runs/table1
    python -m fl_lab.ablations --backbone-weights shapes --confirm --out runs/table1 --results results/table1_cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from fl_lab.ablations import table1_base, table1_grid
from fl_lab.experiment import CONFIRM_SEEDS, EXPLORE_SEEDS, RECORD, _same_run

ROOT = Path(__file__).resolve().parents[1]


def place(out: Path, results: Path = ROOT / "results" / "confirm" / "confirm.json") -> list[str]:
    """Write every run of ``results`` whose configuration is a grid row's on one of its seeds into that
    row's folder under ``out``; the folders written (existing records are left alone)."""
    saved = json.loads(results.read_text())
    pool = [run for arm in saved["arms"] for result in [*arm["explored"], arm["confirmed"]] for run in result["runs"]]
    base = table1_base(gpu=False, backbone_weights="shapes")
    placed = []
    for arm in table1_grid():
        row = arm.config(base, out)
        for seed in (*EXPLORE_SEEDS, *CONFIRM_SEEDS):
            folder = Path(row.out) / f"seed{seed}"  # where run_seeds puts the seed's run
            config = dataclasses.replace(row, seed=seed, out=str(folder))
            match = next((run for run in pool if _same_run(run["config"], config)), None)
            if match is None or (folder / RECORD).exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RECORD).write_text(json.dumps({**match, "config": dataclasses.asdict(config), "out": str(folder)},
                                                    indent=2))
            placed.append(str(folder))
    return placed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/table1_from_confirm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the grid's runs folder (ablations --out)")
    args = parser.parse_args(argv)
    placed = place(args.out)
    print(f"{len(placed)} runs of results/confirm placed under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
