"""The paper's Table 1 at small scale: each ablation is a training configuration (lesson 06).

A run is a :class:`fl_lab.train.Config` changed in a few fields -- the loss, γ, α, OHEM's
settings or the prior initialisation -- trained by :func:`fl_lab.train.run` and scored by the
same COCO AP. :func:`run_ablations` runs a grid and keeps each run's folder, so a second call
reads finished runs back instead of training them again. :func:`check_orderings` tests the
paper's conclusions on the results: FL (γ = 2) beats the best α-balanced CE (Table 1a/b) and
the best OHEM (Table 1d), and CE without the prior initialisation fails (§3.3, §4.1).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from .analysis import Claim
from .train import PRESETS, Config, Diverged, run

__all__ = [
    "Ablation",
    "AblationResult",
    "check_orderings",
    "format_table",
    "run_ablations",
    "table1_base",
    "table1_grid",
]


@dataclass(frozen=True)
class Ablation:
    """One row of Table 1: a name, its part of the table, and the Config fields it changes.

    paper: the paper's (AP, AP50, AP75) for this setting, as far as ../shared/PAPER.md states
    them (AP alone where only AP is given); None where the paper reports no number.
    paper_note: what the paper says when there is no number, or where its row differs (R101).
    """

    name: str
    group: str
    overrides: dict = field(default_factory=dict)
    paper: Optional[tuple[float, ...]] = None
    paper_note: str = ""


@dataclass
class AblationResult:
    """What one run gave: AP metrics, or the iteration at which its loss stopped being finite."""

    ablation: Ablation
    metrics: Optional[dict]  # fl_lab.evaluate.METRICS -> value; None if the run diverged
    diverged_at: Optional[int]  # iteration of the first non-finite loss, else None
    final_loss: Optional[float]  # last logged total loss
    seconds: float  # wall time of training + evaluation when the run was made
    out: str  # the run's folder (config, log.jsonl, last.pt, metrics)

    @property
    def ap(self) -> float:
        """AP, 0 for a diverged run (it detects nothing)."""
        return self.metrics["AP"] if self.metrics else 0.0


# The groups of Table 1 that the kit reproduces (c, anchors, is lesson 02's subject).
ALPHA_CE, FOCAL, OHEM, PRIOR = "(a) α-balanced CE", "(b) focal loss", "(d) OHEM (paper: R101)", "prior init (§3.3)"


def _alpha_ce(alpha: float, paper: Optional[tuple[float, ...]]) -> Ablation:
    return Ablation(f"α-CE α={alpha:g}", ALPHA_CE, dict(loss_fn="balanced_ce", alpha=alpha), paper)


def _focal(gamma: float, alpha: float, paper: tuple[float, ...]) -> Ablation:
    return Ablation(f"FL γ={gamma:g} α={alpha:g}", FOCAL, dict(loss_fn="focal", gamma=gamma, alpha=alpha), paper)


def _ohem(batch: int, nms: float, ratio: bool = False, paper=None, note: str = "") -> Ablation:
    name = f"OHEM{' 1:3' if ratio else ''} B={batch} nms={nms:g}"
    overrides = dict(loss_fn="ohem", ohem_batch=batch, ohem_nms=nms, ohem_max_pos_fraction=0.25 if ratio else None)
    return Ablation(name, OHEM, overrides, paper, note)


FL_GAMMA_2 = _focal(2.0, 0.25, (34.0, 52.5, 36.5))
BEST_ALPHA_CE = _alpha_ce(0.75, (31.1, 49.4, 33.0))
BEST_OHEM = _ohem(128, 0.5, paper=(32.8, 50.3, 35.1), note="R101; FL there: 36.0 / 54.9 / 38.7")
NO_PRIOR = Ablation("CE (α=.5) without prior init", PRIOR, dict(loss_fn="balanced_ce", alpha=0.5, prior=None),
                    None, "diverges quickly (§3.3)")


def table1_grid(fast: bool = False) -> list[Ablation]:
    """The runs of lesson 06, with the paper's numbers (Table 1, COCO minival, R50 at 600 px).

    Full (16 runs): (a) α-balanced CE for α ∈ {.25, .5, .75, .9, .99}; (b) FL for γ ∈ {.5, 1, 2, 5}
    with the paper's best α for each (γ = 0 with α = .75 is row (a) α = .75); (d) OHEM with
    batch 128 and 256 × NMS 0.5 and 0.7, and the 1:3 variant at NMS 0.5; CE without the prior init.
    Fast (4 runs): FL γ = 2, the best α-CE (α = .75), the best OHEM, CE without the prior init.
    """
    if fast:
        return [FL_GAMMA_2, BEST_ALPHA_CE, BEST_OHEM, NO_PRIOR]
    return [
        _alpha_ce(0.25, (10.8,)), _alpha_ce(0.5, (30.2,)), BEST_ALPHA_CE, _alpha_ce(0.9, (30.8,)),
        _alpha_ce(0.99, (28.7,)),
        _focal(0.5, 0.5, (32.9,)), _focal(1.0, 0.25, (33.7,)), FL_GAMMA_2, _focal(5.0, 0.25, (32.2,)),
        BEST_OHEM, _ohem(128, 0.7), _ohem(256, 0.5), _ohem(256, 0.7),
        _ohem(128, 0.5, ratio=True, note="best 1:3 run: 31.1 (R101)"), _ohem(256, 0.5, ratio=True),
        NO_PRIOR,
    ]


def table1_base(gpu: bool, fast: bool = False) -> Config:
    """The configuration every run of the grid shares; only the ablation's own fields change.

    fast (CI, any device): the ``cpu-fast`` preset cut to 150 iterations -- a minute a run on
    two CPU cores, enough to show the prior's effect, too short for AP to separate the losses.
    gpu: the ``gpu`` preset (R50-FPN, batch 16, bf16) at 256 px and 1000 iterations, sized for the
    16 runs to take about 20 minutes on one H100 (an estimate: not yet timed on one).
    otherwise (full size on a CPU): the ``cpu-fast`` preset as it is, 500 iterations (~1.5 min a run; the
    16 took 24 min on two CPU cores, results/table1_cpu).
    """
    every = {"log_every": 1}  # every step in the log: lesson 06 plots each run's whole curve
    if fast:
        return Config(**{**PRESETS["cpu-fast"], "steps": 150, "warmup": 30, "train_images": 600, "val_images": 48,
                         **every})
    if gpu:
        return Config(**{**PRESETS["gpu"], "image_size": 256, "steps": 1000, "warmup": 100, "train_images": 8000,
                         "val_images": 250, "checkpoint_every": 1000, **every})
    return Config(**{**PRESETS["cpu-fast"], **every})


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".=-" else "_" for c in name)


def run_ablations(
    grid: Sequence[Ablation], base: Config, out: str | Path, progress: bool = True, rerun: bool = False
) -> list[AblationResult]:
    """Train and evaluate every ablation of ``grid`` on ``base`` (same data, budget and seed).

    Each run lives in ``out/<name>/`` (the folder layout of :func:`fl_lab.train.run`) plus
    ``ablation.json``, the run's result. A run whose folder already holds an ``ablation.json``
    made with the same configuration is read back, not trained again (``rerun=True`` retrains).
    A run whose loss becomes NaN/inf is recorded as diverged, with the iteration.
    """
    out = Path(out)
    results = []
    for ablation in tqdm(grid, desc="ablations", disable=not progress):
        try:
            config = dataclasses.replace(base, **ablation.overrides, out=str(out / _slug(ablation.name)), evaluate=True)
        except TypeError as err:
            raise ValueError(f"ablation {ablation.name!r}: {err}") from None
        record = Path(config.out) / "ablation.json"
        if not rerun and record.is_file():
            saved = json.loads(record.read_text())
            if saved["config"] == dataclasses.asdict(config):
                results.append(AblationResult(ablation, saved["metrics"], saved["diverged_at"], saved["final_loss"],
                                              saved["seconds"], config.out))
                continue
        start = time.perf_counter()
        try:
            outcome = run(config, progress=progress)
            metrics, history, diverged_at = outcome["metrics"], outcome["history"], None
        except Diverged as err:
            metrics, history = None, err.history
            diverged_at = history[-1]["step"] + 1 if history else 0
        seconds = time.perf_counter() - start
        final = history[-1]["total"] if history else None
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"config": dataclasses.asdict(config), "metrics": metrics,
                                      "diverged_at": diverged_at, "final_loss": final, "seconds": seconds}, indent=2))
        results.append(AblationResult(ablation, metrics, diverged_at, final, seconds, config.out))
    return results


def _paper_text(ablation: Ablation) -> str:
    numbers = " / ".join(f"{v:.1f}" for v in ablation.paper) if ablation.paper else "—"
    return numbers + (f"  ({ablation.paper_note})" if ablation.paper_note else "")


def format_table(results: Sequence[AblationResult]) -> str:
    """Our AP / AP50 / AP75 (×100, the paper's unit) beside the paper's, grouped as in Table 1."""
    header = f"{'run':<30}{'AP':>6}{'AP50':>7}{'AP75':>7}   {'paper AP / AP50 / AP75':<40}"
    lines, group = [header, "-" * len(header)], None
    for r in results:
        if r.ablation.group != group:
            group = r.ablation.group
            lines.append(group)
        if r.metrics:
            ours = "".join(f"{100 * r.metrics[k]:>{w}.1f}" for k, w in (("AP", 6), ("AP50", 7), ("AP75", 7)))
        else:
            ours = f"{f'diverged at iteration {r.diverged_at}':>20}"
        lines.append(f"  {r.ablation.name:<28}{ours}   {_paper_text(r.ablation)}")
    return "\n".join(lines)


def _best(results: Sequence[AblationResult], group: str) -> Optional[AblationResult]:
    runs = [r for r in results if r.ablation.group == group]
    return max(runs, key=lambda r: r.ap) if runs else None


def check_orderings(results: Sequence[AblationResult]) -> list[Claim]:
    """The orderings of Table 1 that should hold, checked on ``results`` (AP, single seed).

    1. FL with γ = 2 beats the best α-balanced CE (Table 1a vs 1b: 34.0 vs 31.1).
    2. FL with γ = 2 beats the best OHEM (Table 1d: 36.0 vs 32.8, R101).
    3. CE without the prior initialisation diverges, or at least lags CE with it (§3.3).
    A strict ">" is asked for: at a budget so short that every AP is 0, nothing is shown.
    """
    by_name = {r.ablation.name: r for r in results}
    focal = by_name.get(FL_GAMMA_2.name)
    claims = []
    for text, rival in (("FL (γ = 2) beats the best α-balanced CE", _best(results, ALPHA_CE)),
                        ("FL (γ = 2) beats the best OHEM", _best(results, OHEM))):
        if focal is None or rival is None:
            claims.append(Claim(text, None, "not in this grid"))
        else:
            claims.append(Claim(text, focal.ap > rival.ap,
                                f"AP {100 * focal.ap:.1f} vs {100 * rival.ap:.1f} ({rival.ablation.name})"))
    text = "CE without the prior init diverges or lags CE with it"
    no_prior = by_name.get(NO_PRIOR.name)
    with_prior = by_name.get(_alpha_ce(0.5, None).name) or _best(results, ALPHA_CE)
    if no_prior is None or with_prior is None:
        claims.append(Claim(text, None, "not in this grid"))
    elif no_prior.diverged_at is not None:
        claims.append(Claim(text, True, f"diverged at iteration {no_prior.diverged_at}"))
    else:
        claims.append(Claim(text, no_prior.ap < with_prior.ap,
                            f"AP {100 * no_prior.ap:.1f} vs {100 * with_prior.ap:.1f} ({with_prior.ablation.name})"))
    return claims


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fl_lab.ablations``: run lesson 06's grid, print the table and the orderings.

    With ``--results DIR`` also writes ``table1.txt``, ``table1.json`` and ``table1.png`` there
    (what ``results/`` holds after a GPU run).
    """
    import argparse
    import sys

    from . import plots
    from .analysis import format_claims
    from .config import fast_mode

    parser = argparse.ArgumentParser(prog="python -m fl_lab.ablations", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", default=fast_mode(),
                        help="the 4-run, 150-iteration grid of fast mode (default: on when FL_LAB_FAST is set)")
    parser.add_argument("--device", default="auto", help="auto (the GPU base when CUDA is present), cpu or cuda")
    parser.add_argument("--out", default="runs/table1", help="folder of the runs (finished runs are read back)")
    parser.add_argument("--results", default=None, help="folder for the table, its JSON and its figure")
    args = parser.parse_args(argv)

    import torch

    gpu = args.device != "cpu" and torch.cuda.is_available()
    base = dataclasses.replace(table1_base(gpu=gpu, fast=args.fast), device=args.device)
    start = time.perf_counter()
    results = run_ablations(table1_grid(fast=args.fast), base, args.out)
    wall = time.perf_counter() - start
    device = torch.cuda.get_device_name() if gpu else "CPU"
    text = "\n\n".join([f"{len(results)} runs of {base.steps} iterations on {device}, {wall:.0f} s in all",
                        format_table(results), format_claims(check_orderings(results))])
    print(text)
    if args.results:
        folder = Path(args.results)
        folder.mkdir(parents=True, exist_ok=True)
        command = "python -m fl_lab.ablations " + " ".join(sys.argv[1:] if argv is None else argv)
        (folder / "table1.txt").write_text(f"$ {command}\n\n{text}\n")
        (folder / "table1.json").write_text(json.dumps({
            "command": command, "device": device, "wall_s": wall, "base": dataclasses.asdict(base),
            "runs": [{"name": r.ablation.name, "group": r.ablation.group, "metrics": r.metrics,
                      "diverged_at": r.diverged_at, "final_loss": r.final_loss, "seconds": r.seconds,
                      "paper": r.ablation.paper} for r in results],
            "claims": [dataclasses.asdict(c) for c in check_orderings(results)]}, indent=2))
        plots.ablations_figure(results, title=f"Table 1 at small scale ({device})").savefig(folder / "table1.png", dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
