"""Where the classification loss goes while RetinaNet trains: FL against α-balanced CE, batch by batch.

Lesson 01 split a *simulated* batch's loss between positives, hard negatives and easy negatives;
lesson 04 watches the same split on the real model as it learns (:class:`fl_lab.analysis.LossShareMonitor`),
beside the committed runs this module makes: the lessons' regime (the ``cpu-pretrained`` preset,
seed 0) trained once with the focal loss (γ 2, α .25) and once with α-balanced CE at the paper's
best α (.75, Table 1a), each measured every :data:`EVERY` iterations under its own loss.

    python -m fl_lab.loss_share --out runs/loss_share --results results/loss_share   # two runs, minutes on a CPU
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

from .analysis import GROUPS, LossSetting, LossShareMonitor
from .experiment import command_line, experiment_parser, read_results, run_or_exit, slug, write_results
from .train import PRESETS, Config, run

__all__ = ["EVERY", "RUNS", "format_rows", "load_results", "main", "measure"]

EVERY = 10  # iterations between measurements: 50 points over the lessons' 500
#: name: the Config fields the run changes; its shares are measured under the loss it trains with
RUNS = {
    "FL (γ = 2, α = .25)": dict(loss_fn="focal", gamma=2.0, alpha=0.25),
    "α-CE (α = .75)": dict(loss_fn="balanced_ce", alpha=0.75),
}


def measure(base: Config, out: str | Path, progress: bool = True) -> dict[str, dict]:
    """Train each of :data:`RUNS` from ``base`` in ``out/<name>``, monitored every :data:`EVERY` steps.

    Returns {name: {"config": dict, "rows": monitor rows, "metrics": AP dict, "train_s": seconds of
    the training loop's steps, "monitor_s": the part of them spent measuring}}.
    """
    measured = {}
    for name, overrides in RUNS.items():
        config = dataclasses.replace(base, **overrides, out=str(Path(out) / slug(name)))
        gamma = config.gamma if config.loss_fn == "focal" else 0.0  # α-balanced CE is the focal loss at γ = 0
        monitor = LossShareMonitor(LossSetting(gamma, config.alpha), every=EVERY)
        result = run(config, progress=progress, monitor=monitor)
        # the training loop's own time (its steps, the monitor's included): no model building or evaluation
        train_s = sum(config.batch_size / row["images_per_s"] for row in result["history"])
        measured[name] = {"config": dataclasses.asdict(config), "rows": monitor.rows, "metrics": result["metrics"],
                          "train_s": train_s, "monitor_s": monitor.seconds}
    return measured


def format_rows(measured: dict[str, dict], steps: Sequence[int] = (0, 50, 100, 250, 490)) -> str:
    """Each run's shares (positives / hard / easy negatives) at a few iterations, then its AP and the
    monitor's cost."""
    lines = [f"{'run':<22}{'iteration':>10}" + "".join(f"{g:>16}" for g in GROUPS)]
    for name, m in measured.items():
        at = {r["step"]: r for r in m["rows"]}
        for step in (s for s in steps if s in at):
            lines.append(f"{name:<22}{step:>10}" + "".join(f"{at[step][g]:>16.1%}" for g in GROUPS))
        lines.append(f"{'':<22}AP {100 * m['metrics']['AP']:.1f}; measuring took {m['monitor_s']:.1f} s of the "
                     f"run's {m['train_s']:.0f} s ({m['monitor_s'] / m['train_s']:.1%})")
    return "\n".join(lines)


def load_results(path: str | Path) -> dict[str, dict]:
    """The runs of a ``loss_share.json`` written by ``python -m fl_lab.loss_share --results`` (lesson 04 reads it)."""
    return read_results(path, "python -m fl_lab.loss_share")["runs"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import plots

    parser = experiment_parser("python -m fl_lab.loss_share", __doc__, "runs/loss_share")
    args = parser.parse_args(argv)
    base = Config(**PRESETS["cpu-pretrained"])
    measured = run_or_exit(parser, args.debug, lambda: measure(base, args.out))
    text = format_rows(measured)
    print(text)
    if args.results:
        write_results(args.results, "loss_share", command_line(parser, argv), text,
                      {"base": dataclasses.asdict(base), "every": EVERY, "runs": measured})
        plots.loss_share_figure({name: m["rows"] for name, m in measured.items()}, base.steps,
                                title="Share of the classification loss, batch by batch (seed 0)").savefig(
            Path(args.results) / "loss_share.png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
