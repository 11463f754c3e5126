"""The paper's Table 1 at small scale: each ablation is a training configuration (lesson 06).

A row is an :class:`fl_lab.experiment.Arm`: the base configuration changed in a few fields --
the loss, γ, α, OHEM's settings or the prior initialisation -- trained over several seeds
(:func:`fl_lab.experiment.run_arm`) and scored by the same COCO AP. :func:`run_ablations`
keeps each run's folder, so a second call reads finished runs back instead of training them
again. :func:`check_orderings` tests the paper's conclusions on the results, seed by seed:
FL (γ = 2) beats the best α-balanced CE (Table 1a/b) and the best OHEM (Table 1d), CE without
the prior initialisation fails (§3.3, §5.1), and 3 × 3 anchors beat 1 × 1 (Table 1c).

The grid runs on the exploration seeds, which choose "the best" rows; judged there, the claims
flatter those rows. ``--confirm`` (:func:`confirm_claims`) trains the rows the claims compare on
the confirmation seeds (:data:`fl_lab.experiment.CONFIRM_SEEDS`) and judges them there, once:

    python -m fl_lab.ablations --backbone-weights shapes --confirm --out runs/table1 --results results/table1_cpu
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from .analysis import NOT_TESTED, Claim, compare_seeds
from .experiment import (
    CONFIRM_SEEDS,
    EXPLORE_SEEDS,
    Arm,
    ArmResult,
    command_line,
    experiment_parser,
    parse_seeds,
    read_results,
    run_arm,
    run_or_exit,
    write_results,
)
from .train import PRESETS, Config

__all__ = [
    "check_orderings",
    "claim_rows",
    "confirm_claims",
    "figure_rows",
    "format_table",
    "load_results",
    "run_ablations",
    "save_figure",
    "table1_base",
    "table1_grid",
]


SEEDS = EXPLORE_SEEDS
"""The grid's seeds: the exploration seeds, on which its best rows are chosen (:func:`claim_rows`)."""

# The groups of Table 1 that the kit reproduces (c, anchors, is lesson 02's subject).
ALPHA_CE, FOCAL, ANCHORS, OHEM, PRIOR = ("(a) α-balanced CE", "(b) focal loss", "(c) anchors: #scales × #ratios",
                                         "(d) OHEM (paper: R101)", "prior init (§3.3)")


def alpha_ce(alpha: float, paper: Optional[tuple[float, ...]] = None) -> Arm:
    return Arm(f"α-CE α={alpha:g}", ALPHA_CE, dict(loss_fn="balanced_ce", alpha=alpha), paper)


def focal(gamma: float, alpha: float, paper: Optional[tuple[float, ...]] = None) -> Arm:
    return Arm(f"FL γ={gamma:g} α={alpha:g}", FOCAL, dict(loss_fn="focal", gamma=gamma, alpha=alpha), paper)


def _ohem(batch: int, nms: float, ratio: bool = False, paper=None, note: str = "") -> Arm:
    name = f"OHEM{' 1:3' if ratio else ''} B={batch} nms={nms:g}"
    overrides = dict(loss_fn="ohem", ohem_batch=batch, ohem_nms=nms, ohem_max_pos_fraction=0.25 if ratio else None)
    return Arm(name, OHEM, overrides, paper, note)


def _anchors(scales: int, ratios: int, paper: float) -> Arm:
    return Arm(f"anchors {scales}×{ratios} (FL γ=2)", ANCHORS,
                    dict(loss_fn="focal", gamma=2.0, alpha=0.25, anchor_scales=scales, anchor_ratios=ratios), (paper,),
                    "3×3 is the FL γ=2 row" if scales == 1 else "")


FL_GAMMA_2 = focal(2.0, 0.25, (34.0, 52.5, 36.5))
BEST_ALPHA_CE = alpha_ce(0.75, (31.1, 49.4, 33.0))
BEST_OHEM = _ohem(128, 0.5, paper=(32.8, 50.3, 35.1), note="R101; FL there: 36.0 / 54.9 / 38.7")
NO_PRIOR = Arm("CE without prior init", PRIOR, dict(loss_fn="ce", prior=None), None,
                    "\"fails quickly, with the network diverging\" (§5.1)")


def table1_grid(fast: bool = False) -> list[Arm]:
    """The runs of lesson 06, with the paper's numbers (Table 1, COCO minival, R50 at 600 px).

    Full (18 rows): (a) α-balanced CE for α ∈ {.25, .5, .75, .9, .99}; (b) FL for γ ∈ {.5, 1, 2, 5}
    with the paper's best α for each (γ = 0 with α = .75 is row (a) α = .75); (c) FL γ = 2 with
    1 scale × 1 ratio and 3 scales × 1 ratio per location (3 × 3 is row (b) γ = 2); (d) OHEM
    with batch 128 and 256 × NMS 0.5 and 0.7, and the 1:3 variant at NMS 0.5; CE without the prior init.
    Fast (4 runs): FL γ = 2, the best α-CE (α = .75), the best OHEM, CE without the prior init.
    """
    if fast:
        return [FL_GAMMA_2, BEST_ALPHA_CE, BEST_OHEM, NO_PRIOR]
    return [
        alpha_ce(0.25, (10.8,)), alpha_ce(0.5, (30.2,)), BEST_ALPHA_CE, alpha_ce(0.9, (30.8,)),
        alpha_ce(0.99, (28.7,)),
        focal(0.5, 0.5, (32.9,)), focal(1.0, 0.25, (33.7,)), FL_GAMMA_2, focal(5.0, 0.25, (32.2,)),
        _anchors(1, 1, 30.3), _anchors(3, 1, 31.8),
        BEST_OHEM, _ohem(128, 0.7), _ohem(256, 0.5), _ohem(256, 0.7),
        _ohem(128, 0.5, ratio=True, note="best 1:3 run: 31.1 (R101)"), _ohem(256, 0.5, ratio=True),
        NO_PRIOR,
    ]


def table1_base(gpu: bool, fast: bool = False, backbone_weights: Optional[str] = None) -> Config:
    """The configuration every run of the grid shares; only the ablation's own fields change.

    otherwise (full size on a CPU): the ``cpu-fast`` preset, from scratch (Shapes at 128 px,
    one object per image, 500 iterations: a few minutes a run on two CPU cores); its
    runs are those of the FL-vs-CE study's reference row (:mod:`fl_lab.study`).
    fast (CI, any device): that preset cut to 20 iterations -- seconds a run, enough to run the
    code and show the prior's effect on the first loss, far too short for AP to separate the losses.
    gpu: the ``gpu`` preset (R50-FPN, batch 16, bf16) at 256 px and 1000 iterations;
    from scratch unless ``backbone_weights`` says otherwise (``"pretrained"`` fine-tunes as the preset does).
    backbone_weights: fine-tune every run from these weights instead (§4.1): a file made by
    ``python -m fl_lab.pretrain``, or ``"shapes"`` -- on a CPU that base is the ``cpu-pretrained``
    preset, the lessons' regime (about 2 minutes a run; lr 0.01 since 2026-12-07, 0.02 before), scored
    on 500 validation images.
    """
    every = {"log_every": 10, "checkpoint_every": 0}  # lesson 06 plots each run's curve; last.pt at the end only
    if fast:
        base = {**PRESETS["cpu-fast"], "steps": 20, "warmup": 4, "train_images": 160, "val_images": 16,
                **every, "log_every": 1}
    elif gpu:
        base = {**PRESETS["gpu"], "image_size": 256, "steps": 1000, "warmup": 100, "train_images": 8000,
                "val_images": 250, **every}
    elif backbone_weights is None:
        base = {**PRESETS["cpu-fast"], **every}
    else:  # the lessons' regime, scored on 500 images as results/confirm is: its runs are this grid's rows too
        base = {**PRESETS["cpu-pretrained"], "val_images": 500, **every}
    return Config(**{**base, "backbone_weights": backbone_weights})


def run_ablations(grid: Sequence[Arm], base: Config, out: str | Path, seeds: Sequence[int] = SEEDS,
                  progress: bool = True, rerun: bool = False) -> list[ArmResult]:
    """Train and evaluate every row of ``grid`` on ``base`` (same data, budget and seeds):
    :func:`fl_lab.experiment.run_arm` for each, its runs in ``out/<name>/seed<s>/`` (finished runs
    are read back, ``rerun=True`` retrains; a run whose loss becomes NaN/inf is recorded as diverged)."""
    with tqdm(grid, desc="ablations", disable=not progress) as bar:  # closed before an error is printed
        return [run_arm(arm, base, out, seeds, rerun=rerun) for arm in bar]


def _paper_text(arm: Arm) -> str:
    numbers = " / ".join(f"{v:.1f}" for v in arm.paper) if arm.paper else "—"
    return numbers + (f"  ({arm.note})" if arm.note else "")


def format_table(results: Sequence[ArmResult]) -> str:
    """Our AP / AP50 / AP75 (×100, the paper's unit; mean ± std over seeds) beside the paper's, grouped as in
    Table 1."""
    metrics = ("AP", "AP50", "AP75")
    cells = {(id(r), k): r.stats(k).format() for r in results for k in metrics}
    column = max([len(c) for c in cells.values()] + [14]) + 2  # "(n=5)" or "(1 seed)" widen a column
    header = f"{'run':<30}" + "".join(f"{k:>{column}}" for k in metrics) + f"   {'paper AP / AP50 / AP75':<40}"
    lines, group = [header, "-" * len(header)], None
    for r in results:
        if r.arm.group != group:
            group = r.arm.group
            lines.append(group)
        ours = "".join(f"{cells[id(r), k]:>{column}}" for k in metrics)
        if r.diverged:
            ours += (f"  (diverged: {len(r.diverged)} of {len(r.runs)} seeds, "
                     f"at iteration {', '.join(map(str, r.diverged))})")
        lines.append(f"  {r.name:<28}{ours}   {_paper_text(r.arm)}")
    return "\n".join(lines)


def _best(results: Sequence[ArmResult], group: str) -> Optional[ArmResult]:
    runs = [r for r in results if r.arm.group == group]
    return max(runs, key=lambda r: r.ap) if runs else None


def check_orderings(results: Sequence[ArmResult]) -> list[Claim]:
    """The orderings of Table 1 that should hold, each judged against the seeds' noise.

    1. FL with γ = 2 beats the best α-balanced CE (Table 1a vs 1b: 34.0 vs 31.1).
    2. FL with γ = 2 beats the best OHEM (Table 1d: 36.0 vs 32.8, R101).
    3. CE without the prior initialisation diverges, or at least lags α-CE (α = .5) with it (§5.1).
    4. More anchors help: 3 scales × 3 ratios (the FL γ = 2 row) beat 1 × 1 (Table 1c: 34.0 vs 30.3).
    Rows share their seeds, so each claim is judged on the per-seed differences: it *holds* when
    their 95 % t interval lies above 0, *fails* below, and is *within noise* when it contains 0
    (:func:`fl_lab.analysis.compare_seeds`);
    "the best" row of a group is the one with the highest mean AP. A run that diverged counts AP 0.
    """
    by_name = {r.name: r for r in results}
    focal = by_name.get(FL_GAMMA_2.name)
    claims = []
    for text, rival in (("FL (γ = 2) beats the best α-balanced CE", _best(results, ALPHA_CE)),
                        ("FL (γ = 2) beats the best OHEM", _best(results, OHEM))):
        if focal is None or rival is None:
            claims.append(Claim(text, NOT_TESTED, "not in this grid"))
        else:
            claims.append(compare_seeds(text, focal.stats(), rival.stats(),
                                        names=(focal.name, rival.name)))
    text = "CE without the prior init diverges or lags α-CE with it"
    no_prior = by_name.get(NO_PRIOR.name)
    with_prior = by_name.get(alpha_ce(0.5).name) or _best(results, ALPHA_CE)
    if no_prior is None or with_prior is None:
        claims.append(Claim(text, NOT_TESTED, "not in this grid"))
    elif len(no_prior.diverged) == len(no_prior.runs):
        claims.append(Claim.check(text, True,
                                  f"diverged in every seed, at iteration {', '.join(map(str, no_prior.diverged))}"))
    else:
        claims.append(compare_seeds(text, with_prior.stats(), no_prior.stats(),
                                    names=(with_prior.name, no_prior.name)))
    text = "3 scales × 3 ratios of anchors beat 1 × 1 (Table 1c)"
    sparse = by_name.get(_anchors(1, 1, 30.3).name)
    if focal is None or sparse is None:
        claims.append(Claim(text, NOT_TESTED, "not in this grid"))
    else:
        claims.append(compare_seeds(text, focal.stats(), sparse.stats(),
                                    names=(focal.name, sparse.name)))
    return claims


def claim_rows(results: Sequence[ArmResult]) -> list[Arm]:
    """The rows :func:`check_orderings` compares, as the grid ``results`` choose them: FL γ = 2, the best
    α-CE and the best OHEM (highest mean AP), CE without the prior, anchors 1 × 1 — those in the grid.

    A claim judged on the seeds its rows were chosen on flatters them, so :func:`confirm_claims`
    trains these rows again on other seeds."""
    chosen = [FL_GAMMA_2.name, *(r.name for r in (_best(results, ALPHA_CE), _best(results, OHEM)) if r is not None),
              NO_PRIOR.name, _anchors(1, 1, 30.3).name]
    arms = {r.name: r.arm for r in results}
    return [arms[name] for name in chosen if name in arms]


def confirm_claims(results: Sequence[ArmResult], base: Config, out: str | Path,
                   seeds: Sequence[int] = CONFIRM_SEEDS, progress: bool = True) -> list[ArmResult]:
    """:func:`claim_rows` of the grid ``results`` trained on the confirmation ``seeds``, in the grid's
    folders (read back when made); :func:`check_orderings` of them is the verdict, read once."""
    explored = {r.seed for result in results for r in result.runs}
    if explored & set(seeds):
        raise ValueError(f"the confirmation seeds {tuple(seeds)} must differ from the grid's {sorted(explored)}")
    return run_ablations(claim_rows(results), base, out, seeds, progress=progress)


def load_results(path: str | Path, confirmed: bool = False) -> list[ArmResult]:
    """The rows of a ``table1.json`` written by ``python -m fl_lab.ablations --results`` (what lessons read);
    ``confirmed``: the rows its claims were judged on, trained on the confirmation seeds (``--confirm``)."""
    saved = read_results(path, "python -m fl_lab.ablations")
    if confirmed and "confirmed" not in saved:
        raise ValueError(f"{path}: made without --confirm; its claims were judged on the seeds that chose its rows")
    return [ArmResult.from_json(r) for r in saved["confirmed" if confirmed else "rows"]]


def figure_rows(results: Sequence[ArmResult], paired: bool = False) -> list[dict]:
    """The plain data :func:`fl_lab.plots.ablations_figure` draws: name, group, AP per seed, paper AP, diverged
    seeds. ``paired``: every row in one group named by the seeds (the confirmation rows, which share them),
    so that the figure joins each seed across all of them."""
    seeds = sorted({tuple(run.seed for run in r.runs) for r in results})
    if paired and len(seeds) > 1:
        raise ValueError(f"paired rows must share their seeds (the figure joins them by position), got {seeds}")
    group = "seeds " + ", ".join(map(str, seeds[0])) if paired and seeds else ""
    return [{"name": r.name, "group": group or r.arm.group, "ap": list(r.stats().values),
             "paper": r.arm.paper[0] if r.arm.paper else None, "diverged": len(r.diverged)} for r in results]


def save_figure(results: Sequence[ArmResult], folder: str | Path, device: str, seeds: int,
                confirmed: Sequence[ArmResult] = ()) -> Path:
    """``table1.png`` in ``folder``: :func:`fl_lab.plots.ablations_figure` of the grid; with ``confirmed``
    rows also ``table1_confirmed.png``, those rows as one group, each confirmation seed joined across them."""
    from . import plots

    path = Path(folder) / "table1.png"
    plots.ablations_figure(figure_rows(results), title=f"Table 1 at small scale ({device}, {seeds} seeds)"
                           ).savefig(path, dpi=100)
    if confirmed:
        plots.ablations_figure(figure_rows(confirmed, paired=True),
                               title=f"The rows Table 1's claims compare, on the confirmation seeds ({device})"
                               ).savefig(Path(folder) / "table1_confirmed.png", dpi=100)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fl_lab.ablations``: run lesson 06's grid, print the table and the orderings.

    With ``--results DIR`` also writes ``table1.txt``, ``table1.json`` and ``table1.png`` there
    (what ``results/`` holds after a GPU run).
    """
    from .analysis import format_claims
    from .fast_mode import fast_mode

    parser = experiment_parser("python -m fl_lab.ablations", main.__doc__, "runs/table1", seeds="0,1,2; with --fast: 0")
    parser.add_argument("--fast", action="store_true", default=fast_mode(),
                        help="the 4-run, 60-iteration grid of fast mode (default: on when FL_LAB_FAST is set)")
    parser.add_argument("--device", default="auto", help="auto (the GPU base when CUDA is present), cpu or cuda")
    parser.add_argument("--rows", default=None, help="comma-separated row names to run (default: the whole grid), "
                        "e.g. \"FL γ=2 α=0.25,α-CE α=0.75\"")
    parser.add_argument("--confirm", action="store_true",
                        help="then train the rows the claims compare (FL γ=2; the best α-CE and OHEM, chosen on the "
                        f"grid; CE without the prior; anchors 1×1) on the confirmation seeds "
                        f"{','.join(map(str, CONFIRM_SEEDS))} and judge the claims there, once")
    parser.add_argument("--backbone-weights", default=None, metavar="FILE",
                        help="fine-tune every run from these backbone weights (python -m fl_lab.pretrain makes them) "
                        "or 'shapes' (the lessons' cpu-pretrained regime; made once into the torch hub cache); "
                        "default: from scratch")
    args = parser.parse_args(argv)
    if args.backbone_weights not in (None, "shapes") and not Path(args.backbone_weights).is_file():
        parser.error(f"--backbone-weights: no file {args.backbone_weights!r}; make it with "
                     "python -m fl_lab.pretrain --out FILE (add --steps 1500 --lr 0.001 --dense-weight 0 for the "
                     "earlier backbone of results/fl_vs_ce), or pass 'shapes'")
    grid = table1_grid(fast=args.fast)
    if args.rows:
        wanted = [name.strip() for name in args.rows.split(",")]
        unknown = sorted(set(wanted) - {a.name for a in grid})
        if unknown:
            parser.error(f"--rows: unknown {unknown}; choose from {[a.name for a in grid]}")
        grid = [a for a in grid if a.name in wanted]
    seeds = parse_seeds(parser, args.seeds, (0,) if args.fast else SEEDS)
    if args.confirm and set(seeds) & set(CONFIRM_SEEDS):
        parser.error(f"--seeds: the grid's seeds choose the rows --confirm judges on {CONFIRM_SEEDS}; "
                     "they must not be among them")

    import torch

    gpu = args.device != "cpu" and torch.cuda.is_available()
    base = dataclasses.replace(table1_base(gpu=gpu, fast=args.fast, backbone_weights=args.backbone_weights),
                               device=args.device)
    start = time.perf_counter()
    results = run_or_exit(parser, args.debug, lambda: run_ablations(grid, base, args.out, seeds))
    confirmed = (run_or_exit(parser, args.debug, lambda: confirm_claims(results, base, args.out, CONFIRM_SEEDS))
                 if args.confirm else [])
    wall = time.perf_counter() - start
    device = torch.cuda.get_device_name() if gpu else "CPU"
    made = sum(r.seconds for a in [*results, *confirmed] for r in a.runs)
    claims = check_orderings(confirmed or results)
    parts = [f"{len(results)} rows × {len(seeds)} seeds of {base.steps} iterations on {device}"
             + (f", then {len(confirmed)} rows × {len(CONFIRM_SEEDS)} confirmation seeds" if confirmed else "")
             + f": {made / 60:.0f} min of training and evaluation when the runs were made",
             f"the grid, seeds {', '.join(map(str, seeds))}", format_table(results)]
    if confirmed:
        parts += [f"the rows the claims compare (chosen on the grid), confirmation seeds "
                  f"{', '.join(map(str, CONFIRM_SEEDS))}", format_table(confirmed)]
    else:
        parts.append("claims judged on the seeds that chose the best rows (exploratory; --confirm judges them on "
                     "other seeds):")
    text = "\n\n".join([*parts, format_claims(claims)])
    print(text)
    if args.results:
        folder = Path(args.results)
        write_results(folder, "table1", command_line(parser, argv), text, {
            "device": device, "wall_s_this_call": wall, "base": dataclasses.asdict(base), "seeds": list(seeds),
            "rows": [r.to_json() for r in results],
            **({"confirm_seeds": list(CONFIRM_SEEDS), "confirmed": [r.to_json() for r in confirmed]}
               if confirmed else {}),
            "claims": [dataclasses.asdict(c) for c in claims]})
        save_figure(results, folder, device, len(seeds), confirmed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
