"""Place ``results/confirm``'s finished runs where another experiment on the lessons' regime expects them.

``results/confirm`` trained FL (γ 2, α .25) and α-CE (α .5, .75, .9) in the lessons' regime on the
exploration seeds 0–2 and the confirmation seeds 100–104. Two later experiments train some of the very
same configurations on the same seeds (a retrained run reproduces its metrics bit for bit):

* ``table1``: Table 1's grid on the lessons' backbone (``python -m fl_lab.ablations --backbone-weights
  shapes --confirm``), four of whose rows are those configurations, on seeds 0–2 and 100–104;
* ``figure2``: lesson 07's comparison (``python -m fl_lab.compare``), whose RetinaNet (FL) and (α-CE)
  at 128 px are ``results/confirm``'s two chosen arms. Only seeds 101–104 are placed: the comparison
  times each detector's first seed (100) on its trained weights, which the records do not carry.

This writes those runs' records into the experiment's run folders, so that it reads them back instead
of training them again (:func:`fl_lab.experiment.run_once` compares each record's configuration with
the one it would train):

    python tools/place_confirm_runs.py table1 runs/table1
    python -m fl_lab.ablations --backbone-weights shapes --confirm --out runs/table1 --results results/table1_cpu
    python tools/place_confirm_runs.py figure2 runs/figure2
    python -m fl_lab.compare --sizes 96,192 --seeds 100,101,102 --out runs/figure2 --results results/figure2_cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from fl_lab.ablations import table1_base, table1_grid
from fl_lab.compare import compare_base, detector_arms
from fl_lab.experiment import CONFIRM_SEEDS, EXPLORE_SEEDS, RECORD, _same_run
from fl_lab.train import Config

ROOT = Path(__file__).resolve().parents[1]
CONFIRM = ROOT / "results" / "confirm" / "confirm.json"


def experiment_rows(experiment: str, out: Path) -> tuple[list[Config], tuple[int, ...]]:
    """Each arm's configuration of ``experiment`` ("table1" or "figure2") with its runs under ``out``,
    and the seeds whose runs may be placed."""
    if experiment == "table1":
        base = table1_base(gpu=False, backbone_weights="shapes")
        return [arm.config(base, out) for arm in table1_grid()], (*EXPLORE_SEEDS, *CONFIRM_SEEDS)
    if experiment == "figure2":
        base = dataclasses.replace(compare_base(gpu=False, fast=False), device="cpu", evaluate=True)  # as compare runs
        return [arm.config(base, out) for arm in detector_arms(base)], CONFIRM_SEEDS[1:]
    raise ValueError(f"unknown experiment {experiment!r}: expected table1 or figure2")


def _on_cpu(saved: dict, config: Config) -> dict:
    """``saved`` with its device "auto" read as ``config``'s "cpu": results/confirm ran on a 2-core CPU
    without a GPU (its README), where "auto" is the CPU; ``compare`` records the device it resolved."""
    return {**saved, "device": "cpu"} if saved["device"] == "auto" and config.device == "cpu" else saved


def place(rows: Sequence[Config], seeds: Sequence[int], results: Path = CONFIRM) -> list[str]:
    """Write every run of ``results`` whose configuration is one of ``rows`` on one of ``seeds`` into
    that row's seed folder; the folders written (existing records are left alone)."""
    saved = json.loads(results.read_text())
    pool = [run for arm in saved["arms"] for result in [*arm["explored"], arm["confirmed"]] for run in result["runs"]]
    placed = []
    for row in rows:
        for seed in seeds:
            folder = Path(row.out) / f"seed{seed}"  # where run_seeds puts the seed's run
            config = dataclasses.replace(row, seed=seed, out=str(folder))
            match = next((run for run in pool if _same_run(_on_cpu(run["config"], config), config)), None)
            if match is None or (folder / RECORD).exists():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RECORD).write_text(json.dumps({**match, "config": dataclasses.asdict(config), "out": str(folder)},
                                                    indent=2))
            placed.append(str(folder))
    return placed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/place_confirm_runs.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("table1", "figure2"), help="whose run folders to fill")
    parser.add_argument("out", type=Path, help="the experiment's runs folder (its --out)")
    args = parser.parse_args(argv)
    placed = place(*experiment_rows(args.experiment, args.out))
    print(f"{len(placed)} runs of results/confirm placed under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
