"""The FL-vs-CE study (``results/fl_vs_ce``): where, at small scale, does the focal loss win?

The paper's headline (Table 1a/b) is that FL with γ = 2 beats the best α-balanced CE by
2.9 AP on COCO, where ~100k anchors per image meet a few dozen objects (~1000 negatives per
positive). On two CPU cores the kit trains for minutes, from scratch, on Shapes — so this
study measures, one factor at a time and over seeds, what decides the FL − α-CE gap:

* **imbalance** — negatives per positive anchor, from 1-10 objects per 128 px image (~16 : 1)
  to one object in one image of six (~550 : 1), at the same budget;
* **schedule** — 250, 500 and 1000 iterations in the lessons' regime (the pretrained backbone
  below, one object per image), where FL wins at 500: is that edge an artefact of a short run?
* **sparse schedule** — 500 and 2000 iterations at ~550 : 1 (five images of six empty): does a
  longer run turn FL's edge there into a working detector?
* **learning rate** — one shared grid, each loss at its own best;
* **loss scale** — FL's classification loss ×4, the size of α-CE's: the loss's *size* apart
  from its *shape*;
* **pretrained backbone** — the imbalance sweep again, fine-tuning a ResNet pretrained to
  classify Shapes crops (:mod:`fl_lab.pretrain`, the paper's ImageNet step at small scale)
  instead of training one from scratch: does FL trail because a from-scratch backbone must
  learn its features from the classification loss, and FL's is the smaller?

Every row trains each of its arms on the same data, budget and seeds (0, 1, 2; 0-4 at the
pretrained one-object row, the lessons' ``cpu-pretrained`` regime; results/fl_vs_ce/README.md
says how they came about, and :mod:`fl_lab.confirm` is the protocol a claim rests on); identical
configurations share one folder, so the reference row is trained once for all sweeps.
``python -m fl_lab.study --out runs/fl_vs_ce --results results/fl_vs_ce`` runs it (hours on
two CPU cores; finished runs are read back) and writes the table, JSON and figure.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from .ablations import BEST_ALPHA_CE, FL_GAMMA_2, FOCAL, NO_PRIOR, SEEDS, alpha_ce, focal, table1_base
from .analysis import Claim, SeedStats, anchor_coverage, compare_seeds, format_claims, loss_cdf, paper_findings
from .experiment import (
    Arm,
    ArmResult,
    RunRecord,
    command_line,
    experiment_parser,
    read_results,
    run_arm,
    run_or_exit,
    write_results,
)
from .pretrain import EARLIER_RECIPE, pretrain_backbone
from .train import Config, datasets, load_run

__all__ = ["ARMS", "SEEDS", "STUDY_BASE", "Row", "RowResult", "format_pretrained", "format_rows", "gap_claims",
           "gap_figure", "gap_points", "figure4", "format_figure4", "load_pretrained", "load_results", "main",
           "run_study", "save_gap_figures", "study_rows"]

#: The study's base: the ``cpu-fast`` preset, as Table 1's CPU grid runs it:
#: Shapes at 128 px, one object of 32-96 px per image, ResNet-18-FPN (64 channels, two
#: GroupNorm convs per head) from scratch, 500 iterations of 8 images.
STUDY_BASE = {k: v for k, v in dataclasses.asdict(table1_base(gpu=False)).items() if k != "out"}

FL_X4 = Arm("FL γ=2 α=0.25, cls loss ×4", FOCAL, dict(FL_GAMMA_2.overrides, cls_weight=4.0))
#: The arms, by name: Table 1's rows (the same names, so Table 1's grid reads these runs back). Each
#: loss gets the same small search over α: α-CE {.5, .75, .9}, FL (γ = 2) {.25, .5, .75}.
ARMS: dict[str, Arm] = {a.name: a for a in (FL_GAMMA_2, alpha_ce(0.5), BEST_ALPHA_CE, alpha_ce(0.9), NO_PRIOR,
                                                  focal(2.0, 0.5), focal(2.0, 0.75), FL_X4)}
FL, BEST_CE = FL_GAMMA_2.name, BEST_ALPHA_CE.name
HEADLINE = (FL, BEST_CE)
SEARCH = tuple(a for a in ARMS if a not in (NO_PRIOR.name, FL_X4.name))
"""The same small search over α for each loss: α-CE α ∈ {.5, .75, .9}, FL (γ = 2) α ∈ {.25, .5, .75}."""

IMBALANCE, SCHEDULE, LR, SCALE, REFERENCE = "imbalance", "schedule", "learning rate", "loss scale", "reference"
ONE_OBJECT = "1 object per image"  # the lesson regime's data: the reference row
SPARSE = "sparse schedule"  # the schedule at the paper's order of imbalance (5 of 6 images empty)
LESSON_SEEDS = (0, 1, 2, 3, 4)
SPARSEST = dict(empty_fraction=5 / 6)  # the imbalance sweep's sparsest data: ~540 negatives per positive
PRETRAINED = "pretrained backbone"
PRETRAINED_WEIGHTS = "runs/pretrain/resnet18_shapes.pt"
"""The pretrained-backbone sweep's weights, made with :data:`fl_lab.pretrain.EARLIER_RECIPE` — the
backbone the committed results/fl_vs_ce was measured with (``python -m fl_lab.pretrain --steps 1500
--lr 0.001 --dense-weight 0 --out`` this file); :func:`run_study` makes them when they are missing."""


@dataclass(frozen=True)
class Row:
    """One setting of one sweep: the Config fields it changes from the base, and the arms it trains."""

    sweep: str
    label: str
    overrides: dict
    arms: tuple[str, ...] = HEADLINE
    seeds: Optional[tuple[int, ...]] = None  # None: the study's seeds


def study_rows() -> list[Row]:
    """The study's rows, in the order they are run."""
    return [
        Row(REFERENCE, ONE_OBJECT, {}, tuple(a for a in ARMS if a != FL_X4.name)),
        Row(LR, "lr 0.01", dict(lr=0.01)),
        Row(LR, "lr 0.02", {}),
        Row(LR, "lr 0.05", dict(lr=0.05)),
        Row(SCALE, "FL's cls loss ×4", {}, (FL, FL_X4.name, BEST_CE)),
        Row(IMBALANCE, "1-10 objects per image", dict(max_objects=10)),
        Row(IMBALANCE, ONE_OBJECT, {}),
        Row(IMBALANCE, "5 of 6 images empty", SPARSEST),
        Row(SPARSE, "500 iterations", SPARSEST),
        Row(SPARSE, "2000 iterations", dict(SPARSEST, steps=2000, warmup=200)),
        Row(PRETRAINED, "1-10 objects per image", dict(max_objects=10, backbone_weights=PRETRAINED_WEIGHTS)),
        # the reference row's search over α again, for both losses: the best against the best, on five
        # seeds (results/fl_vs_ce/README.md says how they came about; fl_lab.confirm is the protocol now)
        Row(PRETRAINED, ONE_OBJECT, dict(backbone_weights=PRETRAINED_WEIGHTS), SEARCH, LESSON_SEEDS),
        Row(PRETRAINED, "5 of 6 images empty", dict(SPARSEST, backbone_weights=PRETRAINED_WEIGHTS)),
        # the lesson regime's schedule: its 500 iterations are the row above's runs (seeds 0-2)
        Row(SCHEDULE, "250 iterations", dict(steps=250, warmup=25, backbone_weights=PRETRAINED_WEIGHTS)),
        Row(SCHEDULE, "500 iterations", dict(backbone_weights=PRETRAINED_WEIGHTS)),
        Row(SCHEDULE, "1000 iterations", dict(steps=1000, warmup=100, backbone_weights=PRETRAINED_WEIGHTS)),
    ]


def _slug(overrides: dict) -> str:
    if not overrides:
        return "base"

    def text(v) -> str:  # a weights file: by its name
        return f"{v:.4g}" if isinstance(v, float) else Path(v).stem if isinstance(v, str) else str(v)

    return "_".join(f"{k}={text(v)}" for k, v in sorted(overrides.items()))


def config_of(row: Row, arm: str, out: str | Path, base: Optional[dict] = None) -> Config:
    """The configuration of one arm of one row, in ``out/<what the row changes>/<arm>``: runs
    that are the same configuration share a folder, and ``out/base`` is Table 1's layout."""
    return ARMS[arm].config(_row_base(row, base), Path(out) / _slug(row.overrides))


def _row_base(row: Row, base: Optional[dict] = None) -> Config:
    return Config(**{**(STUDY_BASE if base is None else base), **row.overrides})


@dataclass
class RowResult:
    """A row's arms ({arm name: its runs over the seeds}) and the imbalance its data measured."""

    row: Row
    results: dict[str, ArmResult]
    imbalance: float  # negative anchors per positive anchor (validation images, the paper's rule)

    def stats(self, arm: str, metric: str = "AP") -> SeedStats:
        return self.results[arm].stats(metric)

    def best(self, loss_fn: str, metric: str = "AP") -> str:
        """The arm of ``loss_fn`` ("focal", "balanced_ce") with the highest mean ``metric`` (scaled
        arms excluded): each loss at its best α, as the study's search sets them against each other."""
        arms = [a for a in self.row.arms if ARMS[a].overrides.get("loss_fn") == loss_fn
                and "cls_weight" not in ARMS[a].overrides]
        return max(arms, key=lambda a: self.stats(a, metric).mean)


IMBALANCE_IMAGES = 600
"""Validation images each row's imbalance is measured on (the sparsest row then still has ~100 objects)."""


def measure_imbalance(config: Config, images: Optional[int] = None) -> float:
    """Negative : positive anchors of a configuration's validation data (:func:`anchor_coverage`)."""
    _, val_set = datasets(dataclasses.replace(config, val_images=images or IMBALANCE_IMAGES))
    return anchor_coverage(val_set).imbalance


def run_study(out: str | Path, rows: Optional[Sequence[Row]] = None, seeds: Sequence[int] = SEEDS,
              base: Optional[dict] = None, progress: bool = True) -> list[RowResult]:
    """Run (or read back) every arm of every row over ``seeds``; runs shared by rows are made once.
    A row's ``backbone_weights`` file is made first (:func:`fl_lab.pretrain.pretrain_backbone`,
    :data:`fl_lab.pretrain.EARLIER_RECIPE`) if it does not exist."""
    results = []
    for row in tqdm(list(rows if rows is not None else study_rows()), desc="study rows", disable=not progress):
        weights = row.overrides.get("backbone_weights")
        if weights is not None and not Path(weights).exists():
            pretrain_backbone(weights, progress=progress, **EARLIER_RECIPE)
        arms = {arm: run_arm(ARMS[arm], _row_base(row, base), Path(out) / _slug(row.overrides), row.seeds or seeds)
                for arm in row.arms}
        results.append(RowResult(row, arms, measure_imbalance(config_of(row, row.arms[0], out, base))))
    return results


def format_rows(results: Sequence[RowResult], metrics: Sequence[str] = ("AP", "AP50"), per_seed: bool = False) -> str:
    """A table: one line per (row, arm), each metric as mean ± std over seeds (×100); with
    ``per_seed``, each seed's AP too (in seed order)."""
    width = max([len(a) for r in results for a in r.row.arms] + [3]) + 2
    sweep = max([len(r.row.sweep) for r in results] + [5]) + 2
    cells = {(id(r), arm, m): r.stats(arm, m).format() for r in results for arm in r.row.arms for m in metrics}
    column = max([len(c) for c in cells.values()] + [14]) + 2  # "(n=5)" where a row has its own seeds
    header = (f"{'sweep':<{sweep}}{'row':<26}{'neg:pos':>8}  {'arm':<{width}}"
              + "".join(f"{m:>{column}}" for m in metrics)
              + ("   AP of each seed" if per_seed else ""))
    lines = [header, "-" * len(header)]
    for r in results:
        for i, arm in enumerate(r.row.arms):
            head = f"{r.row.sweep:<{sweep}}{r.row.label:<26}{r.imbalance:>6.0f}:1" if i == 0 else " " * (sweep + 34)
            seeds = "   " + " / ".join(f"{100 * v:.1f}" for v in r.stats(arm).values) if per_seed else ""
            lines.append(f"{head}  {arm:<{width}}" + "".join(f"{cells[id(r), arm, m]:>{column}}" for m in metrics)
                         + seeds)
    return "\n".join(lines)


def gap_claims(results: Sequence[RowResult], metric: str = "AP") -> list[Claim]:
    """For each row: does FL (γ = 2) beat the best α-CE arm of that row, seed by seed
    (:func:`fl_lab.analysis.compare_seeds`: the 95 % t interval of the paired differences)?

    The best α-CE arm is the one with the highest mean; where a row searched FL's α too, its
    best FL is set against the best α-CE as well; in the learning-rate sweep each loss is
    taken at its own best learning rate (one extra claim).
    """
    claims = []
    for r in results:
        best = r.best("balanced_ce", metric)
        fl_arms = [a for a in r.row.arms if ARMS[a].overrides.get("loss_fn") == "focal"]
        for fl in fl_arms:
            claims.append(compare_seeds(f"{r.row.sweep}, {r.row.label}: {fl} beats {best}",
                                        r.stats(fl, metric), r.stats(best, metric)))
        searched = [a for a in fl_arms if "cls_weight" not in ARMS[a].overrides]
        if len(searched) > 1:  # the same small search over α for both losses: the best against the best
            best_fl = r.best("focal", metric)
            claims.append(compare_seeds(f"{r.row.sweep}, {r.row.label}: FL at its best α ({best_fl}) beats α-CE at "
                                        f"its best α ({best})", r.stats(best_fl, metric), r.stats(best, metric)))
    lr_rows = [r for r in results if r.row.sweep == LR]
    if lr_rows:
        best_fl = max(lr_rows, key=lambda r: r.stats(FL, metric).mean)
        best_ce = max(lr_rows, key=lambda r: r.stats(BEST_CE, metric).mean)
        claims.append(compare_seeds(f"each loss at its best learning rate: FL ({best_fl.row.label}) beats α-CE "
                                    f"({best_ce.row.label})", best_fl.stats(FL, metric),
                                    best_ce.stats(BEST_CE, metric)))
    return claims


def gap_points(results: Sequence[RowResult], sweep: str) -> list[tuple[float, tuple, tuple]]:
    """(factor, FL's AP per seed, α-CE α = .75's AP per seed) for each row of ``sweep`` — what
    :func:`fl_lab.plots.gap_figure` draws. The factor: negatives per positive
    (imbalance, pretrained backbone), iterations (schedule, sparse schedule) or the learning rate."""
    def factor(r: RowResult) -> float:
        trained = r.results[FL].runs[0].config
        return {IMBALANCE: r.imbalance, PRETRAINED: r.imbalance, SCHEDULE: trained["steps"], SPARSE: trained["steps"],
                LR: trained["lr"]}[sweep]

    return [(factor(r), r.stats(FL).values, r.stats(BEST_CE).values) for r in results if r.row.sweep == sweep]


def format_pretrained(summaries: dict) -> str:
    """One line per pretrained backbone the study fine-tuned from: how it was made and how well it
    classifies (``summaries``: {weights file: :func:`fl_lab.pretrain.pretrain_backbone`'s summary})."""
    return "\n".join(f"pretrained backbone {path}: {m['backbone']}, {m['steps']} iterations of {m['batch_size']} "
                     f"Shapes crops at {m['image_size']} px (seed {m['seed']}), {m['held_out_accuracy']:.1%} held-out "
                     f"accuracy, {m['seconds'] / 60:.0f} min" for path, m in summaries.items())


def load_pretrained(path: str | Path) -> dict:
    """How the pretrained backbones of a ``study.json`` were made: {weights file: summary}
    (:func:`format_pretrained` prints it)."""
    return read_results(path, "python -m fl_lab.study")["pretrained"]


def load_results(path: str | Path) -> list[RowResult]:
    """The rows of a ``study.json`` written by ``python -m fl_lab.study --results`` (what lessons read)."""
    rows = read_results(path, "python -m fl_lab.study")["rows"]
    return [RowResult(Row(r["sweep"], r["label"], r["overrides"], tuple(a["name"] for a in r["arms"])),
                      {a["name"]: ArmResult.from_json(a) for a in r["arms"]}, r["imbalance"]) for r in rows]


FIGURE4_ROWS = ((REFERENCE, "figure4"), (PRETRAINED, "figure4_pretrained"))
"""Where :func:`main` measures Figure 4 (from scratch; fine-tuned, the lessons' regime), and its file names."""
FIGURE4_IMAGES = 500
"""Fresh validation images each model's Figure 4 is sampled from (as lesson 05 does in full mode)."""


def figure4(records: Sequence[RunRecord], images: Optional[int] = None, progress: bool = False) -> list[dict]:
    """The paper's Figure 4 measured on each seed's trained model (lesson 05's analysis, repeated).

    For each run: its model (``last.pt``), :func:`fl_lab.analysis.loss_cdf` on fresh images (a
    split none of the runs trained or was scored on), the share of the loss held by the hardest
    20 / 5 / 1 % of positives and negatives for γ ∈ {0, 0.5, 1, 2}, and the paper's four findings.
    """
    out = []
    for record in records:
        model, config = load_run(record.out)
        _, fresh = datasets(dataclasses.replace(config, val_images=images or FIGURE4_IMAGES, seed=config.seed + 1))
        result = loss_cdf(model, fresh, gammas=(0.0, 0.5, 1.0, 2.0), max_negatives=2_000_000, progress=progress)
        out.append({"seed": record.seed, "out": record.out, "images": result.num_images,
                    "positives": result.seen_positives, "negatives": result.seen_negatives,
                    "shares": {f"{kind} γ={gamma:g}": {f"{f:g}": v for f, v in shares.items()}
                               for (kind, gamma), shares in result.shares().items()},
                    "claims": [dataclasses.asdict(c) for c in paper_findings(result)]})
    return out


def format_figure4(seeds: Sequence[dict]) -> str:
    """The hardest-sample shares of :func:`figure4`, mean ± std over seeds, one line per (set, γ)."""
    keys = list(seeds[0]["shares"])
    fractions = list(seeds[0]["shares"][keys[0]])
    cells = {(key, f): SeedStats(tuple(s["shares"][key][f] for s in seeds)).format() for key in keys for f in fractions}
    column = max(len(c) for c in cells.values()) + 2  # wider when n is not 3: "(n=5)"
    lines = [f"share of the loss held by the hardest samples, mean ± std over {len(seeds)} seeds' models",
             f"{'set':<18}" + "".join(f"{f'top {float(f):.0%}':>{column}}" for f in fractions)]
    for key in keys:
        lines.append(f"{key:<18}" + "".join(f"{cells[key, f]:>{column}}" for f in fractions))
    verdicts = [[c["verdict"] for c in s["claims"]] for s in seeds]
    for i, claim in enumerate(seeds[0]["claims"]):
        lines.append(f"{claim['text']}: {', '.join(v[i] for v in verdicts)} "
                     f"(seeds {', '.join(str(s['seed']) for s in seeds)})")
    return "\n".join(lines)


def to_json(results: Sequence[RowResult]) -> list[dict]:
    """Every row, arm and run: configuration, metrics, final losses, seconds."""
    return [{"sweep": r.row.sweep, "label": r.row.label, "overrides": r.row.overrides, "imbalance": r.imbalance,
             "arms": [arm.to_json() for arm in r.results.values()]}
            for r in results]


_AXES = {IMBALANCE: ("negative anchors per positive anchor (log scale)", "against the imbalance"),
         SCHEDULE: ("training iterations (log scale)", "against the schedule's length, pretrained, 1 object"),
         SPARSE: ("training iterations (log scale)", "against the schedule's length, 5 of 6 images empty"),
         LR: ("learning rate (log scale)", "against the learning rate, 1 object per image"),
         PRETRAINED: ("negative anchors per positive anchor (log scale)", "against the imbalance, pretrained backbone")}


def gap_figure(results: Sequence[RowResult], sweep: str):
    """:func:`fl_lab.plots.gap_figure` of one sweep of the study."""
    from . import plots

    xlabel, what = _AXES[sweep]
    return plots.gap_figure(gap_points(results, sweep), xlabel=xlabel, log_x=True,
                            joined=sweep not in (IMBALANCE, PRETRAINED),  # the imbalance rows draw other data
                            title=f"FL (γ = 2, α = .25) − α-CE (α = .75) {what} (Shapes, 2 CPU cores)")


def save_gap_figures(results: Sequence[RowResult], folder: str | Path) -> list[Path]:
    """``gap_vs_<sweep>.png`` in ``folder`` for each sweep the results hold (:func:`gap_figure`)."""
    paths = []
    for sweep, name in ((IMBALANCE, "imbalance"), (SCHEDULE, "schedule"), (SPARSE, "sparse_schedule"), (LR, "lr"),
                        (PRETRAINED, "imbalance_pretrained")):
        if any(r.row.sweep == sweep for r in results):
            paths.append(Path(folder) / f"gap_vs_{name}.png")
            gap_figure(results, sweep).savefig(paths[-1], dpi=100)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fl_lab.study``: run the study (finished runs are read back), print it, write results."""
    parser = experiment_parser("python -m fl_lab.study", __doc__, "runs/fl_vs_ce")
    parser.add_argument("--sweeps", default=None, help="comma-separated sweeps to run (default: all): "
                        + ", ".join(dict.fromkeys(r.sweep for r in study_rows())))
    args = parser.parse_args(argv)
    rows = study_rows()
    if args.sweeps:
        wanted = [s.strip() for s in args.sweeps.split(",")]
        unknown = set(wanted) - {r.sweep for r in rows}
        if unknown:
            parser.error(f"--sweeps: unknown {sorted(unknown)}; choose from {sorted({r.sweep for r in rows})}")
        rows = [r for r in rows if r.sweep in wanted]
    start = time.perf_counter()
    results = run_or_exit(parser, args.debug, lambda: run_study(args.out, rows, seeds=SEEDS))
    wall = time.perf_counter() - start
    claims = gap_claims(results)
    weights = sorted({r.row.overrides["backbone_weights"] for r in results if "backbone_weights" in r.row.overrides})
    # how each pretrained backbone was made (fl_lab.pretrain's summary, written next to its weights;
    # a file put there by hand has none)
    pretrained = {w: json.loads(Path(f"{w}.json").read_text()) for w in weights if Path(f"{w}.json").is_file()}
    parts = [format_rows(results), format_claims(claims)] + ([format_pretrained(pretrained)] if pretrained else [])
    text = "\n\n".join(parts)
    print(text)
    if args.results:
        folder = Path(args.results)
        write_results(folder, "study", command_line(parser, argv), text, {
            "wall_s_this_call": wall, "seeds": list(SEEDS), "base": STUDY_BASE, "rows": to_json(results),
            "claims": [dataclasses.asdict(c) for c in claims], "pretrained": pretrained})
        save_gap_figures(results, folder)
        for sweep, name in FIGURE4_ROWS:  # Figure 4 on each seed's FL model, one object per image (lesson 05)
            row = next((r for r in results if r.row.sweep == sweep and r.row.label == ONE_OBJECT), None)
            if row is not None:
                seeds = figure4(row.results[FL].runs)
                (folder / f"{name}.json").write_text(json.dumps({"images": FIGURE4_IMAGES, "seeds": seeds}, indent=2))
                (folder / f"{name}.txt").write_text(format_figure4(seeds) + "\n")
                print(f"\n{name}: {sweep}, {ONE_OBJECT}\n" + format_figure4(seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
