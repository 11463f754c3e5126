"""Which Shapes pretraining should the lessons' regime fine-tune from? (results/pretrain/)

Each candidate recipe pretrains a ResNet-18 once (seed 0, timed), then the lessons' detector —
the ``cpu-pretrained`` preset, 500 iterations — is fine-tuned from it on detector seeds 0, 1, 2
(the same data, budget and code for every candidate). The candidates change one thing at a time:

* ``classify-1500`` — the recipe the kit used until now: the crop's label alone, AdamW 1e-3, 1500 iterations;
* ``classify-300``  — the same label alone at the new recipe's learning rate and length;
* ``cells-300``     — plus the C3-C5 cell labels (the new default, :data:`fl_lab.pretrain.RECIPE`);
* ``cells-200``     — the same, a third shorter.

    python tools/pretrain_study.py --out runs/pretrain_study --results results/pretrain

Runs already made are read back (their ``run.json``), so the command can be stopped and rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import torch

from fl_lab.analysis import SeedStats, paired_difference
from fl_lab.experiment import command_line, run_seeds, write_results
from fl_lab.pretrain import EARLIER_RECIPE, RECIPE, pretrain_backbone
from fl_lab.train import PRESETS, Config

SEEDS = (0, 1, 2)
BASELINE = "classify-1500"
CANDIDATES = {
    "classify-1500": EARLIER_RECIPE,
    "classify-300": dict(RECIPE, dense_weight=0.0),
    "cells-300": dict(RECIPE),
    "cells-200": dict(RECIPE, steps=200),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/pretrain_study.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/pretrain_study"))
    parser.add_argument("--results", type=Path, default=Path("results/pretrain"))
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    args = parser.parse_args(argv)
    names = args.candidates.split(",")
    rows = {}
    for name in names:
        weights = args.out / name / "resnet18_shapes.pt"
        if not weights.is_file():  # renamed into place last, after its summary
            pretrain_backbone(weights, "resnet18", **CANDIDATES[name])
        summary = json.loads(Path(f"{weights}.json").read_text())
        config = Config(**{**PRESETS["cpu-pretrained"], "backbone_weights": str(weights),
                           "out": str(args.out / name / "detector")})
        records = run_seeds(config, SEEDS)
        rows[name] = {"pretrain": summary, "runs": [dataclasses.asdict(r) for r in records],
                      "AP": [r.metric("AP") for r in records], "AP50": [r.metric("AP50") for r in records]}
    lines = [f"{'candidate':<14} {'pretrain s':>10} {'held-out acc':>12} {'AP x100 (seeds 0-2)':>26} "
             f"{'AP50 x100':>14}  AP - {BASELINE} (paired, 95% t interval)"]
    for name, row in rows.items():
        ap, ap50 = SeedStats(row["AP"]), SeedStats(row["AP50"])
        diff = ""
        if name != BASELINE and BASELINE in rows:
            d = paired_difference(row["AP"], rows[BASELINE]["AP"])
            diff = f"{100 * d.mean:+.1f} ± {100 * d.sem:.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"
        lines.append(f"{name:<14} {row['pretrain']['seconds']:>10.0f} {row['pretrain']['held_out_accuracy']:>12.3f} "
                     f"{ap.format() + ' (' + ', '.join(f'{100 * v:.1f}' for v in row['AP']) + ')':>26} "
                     f"{ap50.format():>14}  {diff}")
    text = "\n".join(lines)
    print(text)
    machine = f"{cpu_model()}, {torch.get_num_threads()} threads"
    write_results(args.results, "study", command_line(parser, argv), text,
                  {"machine": machine, "seeds": list(SEEDS), "baseline": BASELINE,
                   "candidates": {n: CANDIDATES[n] for n in names}, "rows": rows})
    figure(rows).savefig(args.results / "study.png", dpi=100)
    return 0


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (where there is one)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def figure(rows: dict):
    """Detector AP of each candidate (one dot per seed, the mean as a bar) beside its pretraining time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ap_axes, time_axes = fig.subplots(1, 2)
    names = list(rows)
    for i, name in enumerate(names):
        aps = [100 * v for v in rows[name]["AP"]]
        ap_axes.bar(i, sum(aps) / len(aps), color="lightsteelblue", label="mean over seeds 0-2" if i == 0 else None)
        ap_axes.plot([i] * len(aps), aps, "o", color="navy", label="one detector seed" if i == 0 else None)
        time_axes.bar(i, rows[name]["pretrain"]["seconds"], color="darkorange",
                      label="pretraining, 2 CPU cores" if i == 0 else None)
    for axes, label, title in ((ap_axes, "detector AP ×100 (500 iterations)", "What the detector gains"),
                               (time_axes, "seconds", "What the pretraining costs")):
        axes.set_xticks(range(len(names)), names)
        axes.set_xlabel("pretraining recipe")
        axes.set_ylabel(label)
        axes.set_title(title)
        axes.legend(loc="upper right")
    ap_axes.set_ylim(0, 100)  # room above the bars for the legend
    return fig


if __name__ == "__main__":
    sys.exit(main())
