"""Explore, then confirm: each arm tuned alike on exploration seeds, its choice judged on seeds fixed in advance.

A result read on the seeds its settings were chosen on flatters the winner, and seeds added after
a look turn "within noise" into "holds" too often. So every claim the lessons make about training
comes from :func:`explore_then_confirm`:

1. **explore** — every arm (a loss, say) runs the *same* small :class:`Search` (its candidates: α ×
   learning rate) on :data:`EXPLORE_SEEDS`; each arm's choice is its candidate with the highest mean AP;
2. **confirm** — each arm's choice is trained on :data:`CONFIRM_SEEDS`, declared here before any
   confirmation ran, and the claim is judged once, at that count, seed by seed
   (:func:`fl_lab.analysis.compare_seeds`: the 95 % t interval of the paired differences).

More seeds later are a labelled follow-up, never a replacement. :data:`REGIMES` names the data the
question is asked on: the lessons' (one object per image, ~92 negatives per positive) and the
many-objects pair (the same ~4 objects per image on two canvases: ~151 and ~38 : 1), which varies
the imbalance at a fixed object count.

    python -m fl_lab.confirm --out runs/confirm --results results/confirm     # the lessons' regime: 64 runs
    python -m fl_lab.confirm --regime many-objects --out runs/confirm_many --results results/confirm_many
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .analysis import Claim, SeedStats, compare_seeds, format_claims
from .experiment import (
    CONFIRM_SEEDS,
    EXPLORE_SEEDS,
    Arm,
    ArmResult,
    command_line,
    experiment_parser,
    read_results,
    run_arm,
    run_or_exit,
    slug,
    write_results,
)
from .study import measure_imbalance
from .train import PRESETS, Config

__all__ = ["CONFIRM_SEEDS", "EXPLORE_SEEDS", "LESSONS_ARMS", "MANY_OBJECTS_ARMS", "REGIMES", "ArmOutcome", "Regime",
           "RegimeGap", "Search", "explore_then_confirm", "format_confirmation", "format_gaps", "format_outcomes",
           "gap_changes", "gap_figure", "lessons_base", "load_gap", "load_results", "main", "many_objects_base"]

LEARNING_RATES = (0.01, 0.02, 0.04)


@dataclass(frozen=True)
class Search:
    """One side of a comparison (a loss, say) and the candidates it is searched over."""

    name: str
    candidates: tuple[Arm, ...]


def _grid(loss_fn: str, alphas: Sequence[float], lrs: Sequence[float] = LEARNING_RATES, **fixed) -> tuple[Arm, ...]:
    return tuple(Arm(f"α={a:g} lr={lr:g}", overrides=dict(loss_fn=loss_fn, alpha=a, lr=lr, **fixed))
                 for a, lr in itertools.product(alphas, lrs))


#: The lessons' question: FL (γ = 2) against α-balanced CE, each searched over α × learning rate alike.
LESSONS_ARMS = (Search("FL γ=2", _grid("focal", (0.25, 0.5, 0.75), gamma=2.0)),
                Search("α-CE", _grid("balanced_ce", (0.5, 0.75, 0.9))))


def lessons_base() -> Config:
    """The lessons' regime (``cpu-pretrained``: the Shapes-pretrained backbone of lesson 4) with 500
    validation images, so that each seed's AP rests on 500 objects."""
    return Config(**{**PRESETS["cpu-pretrained"], "val_images": 500, "log_every": 10, "checkpoint_every": 0})


#: The many-objects question: the same α grids at the learning rate both losses chose in the lessons'
#: regime (0.01), a search two cores can afford at 320 px.
MANY_OBJECTS_ARMS = (Search("FL γ=2", _grid("focal", (0.25, 0.5, 0.75), lrs=(0.01,), gamma=2.0)),
                     Search("α-CE", _grid("balanced_ce", (0.5, 0.75, 0.9), lrs=(0.01,))))


def many_objects_base(image_size: int) -> Config:
    """The lessons' regime with 3–5 objects of 32–48 px per image (~4 on average; COCO has ~7) on an
    ``image_size`` canvas: 320 px gives ~151 negative anchors per positive, 160 px ~38 — the same
    objects, so the imbalance changes and the object count does not."""
    return dataclasses.replace(lessons_base(), image_size=image_size, min_objects=3, max_objects=5,
                               min_object_size=32.0, max_object_size=48.0)


@dataclass(frozen=True)
class Regime:
    """The data a comparison is made on: its base configuration (made on demand) and its searches."""

    description: str
    base: Callable[[], Config]
    arms: tuple[Search, ...]


#: ``--regime``'s choices.
REGIMES = {
    "lessons": Regime("the lessons' regime (one object per image)", lessons_base, LESSONS_ARMS),
    "many-objects": Regime("3–5 objects per image on 320 px canvases", lambda: many_objects_base(320),
                           MANY_OBJECTS_ARMS),
    "many-objects-small": Regime("the same 3–5 objects on 160 px canvases", lambda: many_objects_base(160),
                                 MANY_OBJECTS_ARMS),
}


@dataclass
class ArmOutcome:
    """An arm's exploration (every candidate's runs on the exploration seeds), its choice and its confirmation."""

    arm: str
    explored: list[ArmResult]  # every candidate, on the exploration seeds
    chosen: str
    confirmed: ArmResult  # the chosen candidate on the confirmation seeds

    def to_json(self) -> dict:
        return {"arm": self.arm, "explored": [r.to_json() for r in self.explored], "chosen": self.chosen,
                "confirmed": self.confirmed.to_json()}


def explore_then_confirm(base: Config, arms: Sequence[Search], out: str | Path, progress: bool = True,
                         explore_seeds: Sequence[int] = EXPLORE_SEEDS,
                         confirm_seeds: Sequence[int] = CONFIRM_SEEDS) -> list[ArmOutcome]:
    """Run every arm's search on ``explore_seeds``, choose each arm's best mean AP, then train the
    choices on ``confirm_seeds``. Runs live in ``out/<arm>/<candidate>/seed<s>`` and are read back when
    made (:func:`fl_lab.experiment.run_arm`).

    Every choice is made before any confirmation trains, and the confirmations run seed by seed
    across the arms: a study continued on another machine (``tools/run_records.py``) then has its
    paired confirmation runs made together, on one machine's pretrained backbone, where possible."""
    if set(explore_seeds) & set(confirm_seeds):
        raise ValueError(f"exploration and confirmation seeds must differ, got {explore_seeds} and {confirm_seeds}")
    folders = [Path(out) / slug(search.name) for search in arms]
    explored = [[run_arm(arm, base, folder, explore_seeds, progress=progress) for arm in search.candidates]
                for search, folder in zip(arms, folders, strict=True)]
    chosen = [max(results, key=lambda r: r.ap).arm for results in explored]
    for seed in confirm_seeds:
        for arm, folder in zip(chosen, folders, strict=True):
            run_arm(arm, base, folder, (seed,), progress=progress)
    return [ArmOutcome(search.name, results, arm.name, run_arm(arm, base, folder, confirm_seeds, progress=progress))
            for search, results, arm, folder in zip(arms, explored, chosen, folders, strict=True)]


def claims(outcomes: Sequence[ArmOutcome]) -> list[Claim]:
    """The first arm against each other one, at their choices, on the confirmation seeds (paired)."""
    first = outcomes[0]
    return [compare_seeds(f"{first.arm} ({first.chosen}) beats {o.arm} ({o.chosen}) on the confirmation seeds",
                          first.confirmed.stats(), o.confirmed.stats(), names=(first.arm, o.arm))
            for o in outcomes[1:]]


def format_outcomes(outcomes: Sequence[ArmOutcome]) -> str:
    """The exploration grid (mean AP ×100 per candidate, the choice starred), then each choice's
    confirmation (:func:`format_confirmation`), then the claims."""
    seeds = [r.seed for r in outcomes[0].explored[0].runs]
    lines = [f"exploration on seeds {', '.join(map(str, seeds))}: mean AP ×100 per candidate (* the arm's choice)"]
    for o in outcomes:
        cells = [f"{r.name} {100 * r.ap:5.1f}{'*' if r.name == o.chosen else ' '}" for r in o.explored]
        lines += [f"  {o.arm:<8} " + "  ".join(cells[i:i + 3]) for i in range(0, len(cells), 3)]
    return "\n".join(lines + [format_confirmation(outcomes), "", format_claims(claims(outcomes))])


def format_confirmation(outcomes: Sequence[ArmOutcome]) -> str:
    """Each arm's choice on the confirmation seeds: AP, AP50 and AP75 (×100, mean ± std), then each seed's AP."""
    lines = ["confirmation (×100, mean ± std; then each seed's AP)"]
    for o in outcomes:
        seeds = " / ".join(f"{r.seed}: {100 * r.ap:.1f}" for r in o.confirmed.runs)
        lines.append(f"  {o.arm:<8} {o.chosen:<15}" + "".join(f" {m} {o.confirmed.stats(m).format():<13}"
                                                              for m in ("AP", "AP50", "AP75")) + f"  {seeds}")
    return "\n".join(lines)


def load_results(path: str | Path) -> list[ArmOutcome]:
    """The outcomes of a ``confirm.json`` written by ``python -m fl_lab.confirm --results``."""
    saved = read_results(path, "python -m fl_lab.confirm")["arms"]
    return [ArmOutcome(a["arm"], [ArmResult.from_json(r) for r in a["explored"]], a["chosen"],
                       ArmResult.from_json(a["confirmed"])) for a in saved]


def figure(outcomes: Sequence[ArmOutcome], title: str):
    """Each confirmation seed's AP, one line per seed joining the arms (paired), the means beside."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2), layout="constrained")
    axes = fig.subplots()
    x = range(len(outcomes))
    for i in range(len(outcomes[0].confirmed.runs)):
        axes.plot(x, [100 * o.confirmed.runs[i].ap for o in outcomes], "o-", color="0.6", lw=1,
                  label="one confirmation seed" if i == 0 else None)
    axes.plot(x, [100 * o.confirmed.ap for o in outcomes], "s", color="crimson", ms=9, label="mean")
    axes.set_xticks(list(x), [f"{o.arm}\n({o.chosen})" for o in outcomes])
    axes.set_xlabel("arm (its choice from the exploration)")
    axes.set_ylabel("AP ×100 on 500 validation images")
    axes.set_title(title)
    axes.legend()
    return fig


@dataclass
class RegimeGap:
    """One regime's confirmed comparison, read back from its ``confirm.json``: where it was made
    (objects per image, negatives per positive) and the first arm's paired claim over the second."""

    regime: str
    objects: tuple[int, int]
    imbalance: float
    outcomes: list[ArmOutcome]

    @property
    def claim(self) -> Claim:
        return claims(self.outcomes)[0]

    @property
    def differences(self) -> SeedStats:
        """The first arm's AP minus the second's on each confirmation seed, without the seeds: another
        regime draws other data from them, so two regimes' gaps compare unpaired (Welch)."""
        first, second = (o.confirmed.stats() for o in self.outcomes[:2])
        return SeedStats(tuple(a - b for a, b in zip(first.values, second.values, strict=True)))


def load_gap(path: str | Path) -> RegimeGap:
    """A :class:`RegimeGap` from a ``confirm.json`` written with ``--regime``."""
    saved = read_results(path, "python -m fl_lab.confirm")
    if "imbalance" not in saved:
        raise ValueError(f"{path}: written before confirm.json recorded its regime and imbalance; run "
                         "python -m fl_lab.confirm --results again (finished runs are read back)")
    base = saved["base"]
    return RegimeGap(saved["regime"], (base["min_objects"], base["max_objects"]), saved["imbalance"],
                     load_results(path))


def format_gaps(gaps: Sequence[RegimeGap]) -> str:
    """Per regime: objects per image, imbalance, the confirmed verdict and each arm's choice; then whether
    the gap changes from one imbalance to the next (Welch on the per-seed gaps: other data, not paired)."""
    ordered = sorted(gaps, key=lambda g: g.imbalance)
    lines = [f"{'regime':<20}{'objects':>8}{'neg:pos':>9}   claim on the confirmation seeds"]
    for g in ordered:
        claim = g.claim
        lines.append(f"{g.regime:<20}{_count(g.objects):>8}{g.imbalance:>7.0f}:1   {claim.verdict} — {claim.detail}")
        lines.append(f"{'':<40}chosen: " + ", ".join(f"{o.arm} {o.chosen}" for o in g.outcomes))
    return "\n".join([*lines, format_claims(gap_changes(gaps))])


def gap_changes(gaps: Sequence[RegimeGap]) -> list[Claim]:
    """Whether the first arm's gap grows from each imbalance to the next higher one: Welch on the
    per-seed gaps (:attr:`RegimeGap.differences`)."""
    ordered = sorted(gaps, key=lambda g: g.imbalance)
    return [compare_seeds(f"{high.outcomes[0].arm}'s gap is larger at {high.imbalance:.0f}:1 than at "
                          f"{low.imbalance:.0f}:1", high.differences, low.differences, floor=None)
            for low, high in itertools.pairwise(ordered)]


def _count(objects: tuple[int, int]) -> str:
    low, high = objects
    return f"{low}" if low == high else f"{low}–{high}"


def gap_figure(gaps: Sequence[RegimeGap]):
    """:func:`fl_lab.plots.gap_figure` of the confirmed gap against the imbalance: each arm at its choice."""
    from . import plots

    points = [(g.imbalance, g.outcomes[0].confirmed.stats().values, g.outcomes[1].confirmed.stats().values)
              for g in gaps]
    first, second = gaps[0].outcomes[0].arm, gaps[0].outcomes[1].arm
    counts = {_count(g.objects) for g in gaps}
    what = f"{counts.pop()} objects per image" if len(counts) == 1 else "object counts differ"
    return plots.gap_figure(points, xlabel="negative anchors per positive anchor (log scale)", log_x=True,
                            joined=False,  # each canvas draws its own data: its seeds pair within it, not across
                            names=(f"{first} (its α)", f"{second} (its α)"),
                            title=f"{first} − {second} on the confirmation seeds against the imbalance ({what})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = experiment_parser("python -m fl_lab.confirm", __doc__, "runs/confirm")
    parser.add_argument("--regime", choices=list(REGIMES), default="lessons",
                        help="the data the losses are compared on (default: lessons)")
    parser.add_argument("--gaps", nargs="+", default=None, metavar="RESULTS",
                        help="read the confirm.json of these results folders (made with --regime) and report the "
                             "confirmed gap against the imbalance, training nothing; with --results, write gaps.txt, "
                             "gaps.json and gaps.png there")
    args = parser.parse_args(argv)
    if args.gaps:
        return _report_gaps(parser, args, argv)
    regime = REGIMES[args.regime]
    base = regime.base()
    start = time.perf_counter()
    outcomes = run_or_exit(parser, args.debug, lambda: explore_then_confirm(
        base, regime.arms, args.out, explore_seeds=EXPLORE_SEEDS, confirm_seeds=CONFIRM_SEEDS))
    imbalance = run_or_exit(parser, args.debug, lambda: measure_imbalance(base))
    made = sum(r.seconds for o in outcomes for arm in [*o.explored, o.confirmed] for r in arm.runs)
    text = (f"{base.steps} iterations of {regime.description}, {base.image_size} px, {imbalance:.0f} negative "
            f"anchors per positive, {base.val_images} validation images; "
            f"{made / 60:.0f} min of training and evaluation when the runs were made (median "
            f"{statistics.median(r.seconds for o in outcomes for r in o.confirmed.runs):.0f} s a confirmation run)\n\n"
            + format_outcomes(outcomes))
    print(text)
    if args.results:
        write_results(args.results, "confirm", command_line(parser, argv), text, {
            "regime": args.regime, "imbalance": imbalance, "base": dataclasses.asdict(base),
            "explore_seeds": list(EXPLORE_SEEDS),
            "confirm_seeds": list(CONFIRM_SEEDS), "wall_s_this_call": time.perf_counter() - start,
            "arms": [o.to_json() for o in outcomes],
            "claims": [dataclasses.asdict(c) for c in claims(outcomes)]})
        figure(outcomes, f"FL against α-CE, each at its choice ({len(CONFIRM_SEEDS)} confirmation seeds)\n"
                         f"{regime.description}, {imbalance:.0f} : 1").savefig(
            Path(args.results) / "confirm.png", dpi=100)
    return 0


def _report_gaps(parser, args, argv) -> int:
    gaps = run_or_exit(parser, args.debug, lambda: [load_gap(Path(folder) / "confirm.json") for folder in args.gaps])
    text = format_gaps(gaps)
    print(text)
    if args.results:
        write_results(args.results, "gaps", command_line(parser, argv), text, {
            "regimes": [{"regime": g.regime, "results": str(folder), "objects": list(g.objects),
                         "imbalance": g.imbalance, "claim": dataclasses.asdict(g.claim)}
                        for g, folder in zip(gaps, args.gaps, strict=True)],
            "changes": [dataclasses.asdict(c) for c in gap_changes(gaps)]})
        gap_figure(gaps).savefig(Path(args.results) / "gaps.png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
