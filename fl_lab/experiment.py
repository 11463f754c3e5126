"""Training runs as experiments: the one layer every study of the kit stands on.

An experiment (Table 1's grid in :mod:`fl_lab.ablations`, the FL-vs-CE study in :mod:`fl_lab.study`,
the detectors of :mod:`fl_lab.compare`, the protocol of :mod:`fl_lab.confirm`) is a list of
arms (:class:`Arm`: configurations, each a few fields changed from a shared base) and the claims it
judges. :func:`run_arm` trains an arm once per seed (the seed sets the weights, the data, the order
and the flips, so arms sharing seeds are paired) into an :class:`ArmResult`; its
:meth:`ArmResult.stats` feed :func:`fl_lab.analysis.compare_seeds`. Every run writes ``run.json``
(a :class:`RunRecord`: its configuration and what it gave) into its folder; a later call with the
same configuration reads it back instead of training again, so a study can be stopped and
continued, and lessons can read committed results. :func:`experiment_parser`, :func:`run_or_exit`
and :func:`write_results` are the command line and the ``results/`` files they all share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from torch import nn

from .analysis import SeedStats
from .train import Config, Diverged, backbone_weights_file, run

__all__ = ["CONFIRM_SEEDS", "EXPLORE_SEEDS", "RECORD", "Arm", "ArmResult", "RunRecord", "command_line",
           "describe_loss", "experiment_parser", "parse_seeds", "read_results", "run_arm", "run_once", "run_or_exit",
           "run_seeds", "seed_stats", "slug", "weights_sha256", "write_results"]

#: Explore, then confirm: settings are chosen (and grids described) on the exploration seeds; what a
#: claim compares is then trained on the confirmation seeds, declared before any confirmation ran
#: and never extended in place, and judged there once (:mod:`fl_lab.confirm`, ``ablations --confirm``).
EXPLORE_SEEDS = (0, 1, 2)
CONFIRM_SEEDS = (100, 101, 102, 103, 104)

RECORD = "run.json"
_TAIL = 20  # the final losses are averaged over the last this many steps run


@dataclass
class RunRecord:
    """What one training run gave.

    config: the run's :class:`Config` as a dict; metrics: AP dict (:data:`fl_lab.evaluate.METRICS`)
    or None if it diverged; diverged_at: the iteration of the first non-finite loss, else None;
    final: mean cls / box / total loss over the last 20 iterations; seconds: training + evaluation
    wall time when it was made; out: its folder. What really trained, whatever ``config`` says of
    fields a detector ignores: model (the detector), loss (its classification loss and settings)
    and weights_sha256 (of the backbone weights it started from, their tensors not their file:
    :func:`weights_sha256`; None from scratch). Records written before these three existed read back
    with their defaults ("", "", None); those written before 2026-12-07 hold the file's sha256.
    """

    config: dict
    metrics: Optional[dict]
    diverged_at: Optional[int]
    final: dict
    seconds: float
    out: str
    model: str = ""
    loss: str = ""
    weights_sha256: Optional[str] = None

    @property
    def seed(self) -> int:
        return self.config["seed"]

    def metric(self, name: str = "AP") -> float:
        """A metric of the run, 0 for a run that diverged (it detects nothing)."""
        return self.metrics[name] if self.metrics else 0.0

    @property
    def ap(self) -> float:
        return self.metric("AP")


def _final_losses(history: Sequence[dict]) -> dict:
    tail = history[-_TAIL:]
    return {k: sum(row[k] for row in tail) / len(tail) for k in ("cls", "box", "total")} if tail else {}


def _same_run(saved: dict, config: Config) -> bool:
    """Whether a saved configuration is ``config`` (:meth:`Config.from_json` reads it: any field the
    kit gained since then at its default, as the run was made). The folder it was made in does not
    count: a run copied or linked into another experiment's folder is the same run."""
    try:
        return dataclasses.replace(Config.from_json(saved, RECORD), out=config.out) == config
    except (ValueError, TypeError):
        return False


def run_once(config: Config, progress: bool = True, rerun: bool = False,
             build: Optional[Callable[[Config, int], nn.Module]] = None, model: Optional[str] = None) -> RunRecord:
    """Train and evaluate ``config`` in ``config.out``, or read the run back if it was made already.

    A folder whose ``run.json`` holds the same configuration is read back (``rerun=True``
    trains again). A run whose loss becomes NaN/inf is recorded as diverged, with the
    iteration. ``build`` is passed to :func:`fl_lab.train.run` (other detectors than RetinaNet,
    which train with their own losses), ``model`` names what it builds (default: RetinaNet).
    """
    config = dataclasses.replace(config, evaluate=True, stop_after=None)
    record = Path(config.out) / RECORD
    if not rerun and record.is_file():
        saved = json.loads(record.read_text())
        if _same_run(saved["config"], config):
            return RunRecord(**{**saved, "config": dataclasses.asdict(config), "out": config.out})
    start = time.perf_counter()
    try:
        outcome = run(config, progress=progress, build=build)
        metrics, history, diverged_at = outcome["metrics"], outcome["history"], None
    except Diverged as err:
        metrics, history, diverged_at = None, err.history, err.step
    weights = backbone_weights_file(config)
    result = RunRecord(dataclasses.asdict(config), metrics, diverged_at, _final_losses(history),
                       time.perf_counter() - start, config.out,
                       model=model or f"RetinaNet ({config.backbone})",
                       loss=describe_loss(config) if build is None else f"{model or 'the detector'}'s own",
                       weights_sha256=None if weights is None else weights_sha256(weights))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def describe_loss(config: Config) -> str:
    """The classification loss a RetinaNet of ``config`` trains with, and the settings it uses."""
    fn = config.loss_kwargs()["loss_fn"]
    settings = {k: v for k, v in fn.keywords.items() if k != "check_values"}
    return f"{config.loss_fn}({', '.join(f'{k}={v}' for k, v in settings.items())})"


def weights_sha256(path: str | Path) -> str:
    """The sha256 of a weights file's tensors: each name, dtype, shape and bytes, in name order.

    Not of the file: ``torch.save`` writes a random serialization id (and the archive's own name)
    into every file, so the same weights saved twice would hash apart, and runs made on two machines
    from one pretraining could not be told to have started from the same weights."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if isinstance(value, torch.Tensor):
            value = value.detach().contiguous()
            digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            digest.update(value.flatten().view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{name}|{value!r}|".encode())
    return digest.hexdigest()


def run_seeds(config: Config, seeds: Sequence[int], progress: bool = True, rerun: bool = False,
              build: Optional[Callable[[Config, int], nn.Module]] = None, model: Optional[str] = None
              ) -> list[RunRecord]:
    """:func:`run_once` for each seed, in ``config.out/seed<s>``: same data recipe, budget and code."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be distinct ints, at least one, got {seeds!r}")
    return [run_once(dataclasses.replace(config, seed=s, out=str(Path(config.out) / f"seed{s}")), progress, rerun,
                     build, model) for s in seeds]


def seed_stats(records: Sequence[RunRecord], metric: str = "AP") -> SeedStats:
    """The metric over the runs of :func:`run_seeds` (a diverged run counts 0)."""
    return SeedStats(tuple(r.metric(metric) for r in records), tuple(r.seed for r in records))


@dataclass(frozen=True)
class Arm:
    """One configuration an experiment trains over seeds: the :class:`Config` fields it changes from the base.

    name: what tables print; group: the part of the experiment it belongs to (Table 1's (a)-(d), a
    detector's design); paper: the paper's (AP, AP50, AP75) for it, or its AP alone, as far as
    ../shared/PAPER.md states them (None: no number); note: what the paper says instead, or where
    its setting differs; detector: None for the kit's RetinaNet, else the torchvision detector it
    trains (a key of :data:`fl_lab.torchvision_detectors.DETECTORS`, with its own loss); folder: where its runs
    live under the experiment's folder (default: its name, made safe for a path).
    """

    name: str
    group: str = ""
    overrides: dict = field(default_factory=dict)
    paper: Optional[tuple[float, ...]] = None
    note: str = ""
    detector: Optional[str] = None
    folder: str = ""

    def config(self, base: Config, out: str | Path) -> Config:
        """``base`` with this arm's fields, its runs in ``out/<folder>``; an unknown field is a ValueError."""
        try:
            return dataclasses.replace(base, **self.overrides, out=str(Path(out) / (self.folder or slug(self.name))))
        except TypeError as err:
            raise ValueError(f"arm {self.name!r}: {err}") from None


@dataclass
class ArmResult:
    """An arm's runs, one per seed, and what else was measured of it (``measured``: e.g. the first
    seed's inference ms per image)."""

    arm: Arm
    runs: list[RunRecord]
    measured: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.arm.name

    def stats(self, metric: str = "AP") -> SeedStats:
        """The metric over seeds; a diverged run counts 0 (it detects nothing)."""
        return seed_stats(self.runs, metric)

    @property
    def ap(self) -> float:
        """Mean AP over seeds."""
        return self.stats().mean

    @property
    def diverged(self) -> list[int]:
        """The iteration at which each diverged seed's loss stopped being finite."""
        return [r.diverged_at for r in self.runs if r.diverged_at is not None]

    def to_json(self) -> dict:
        """The arm, every run (configuration, metrics, losses, seconds) and ``measured``, as results/ keeps them."""
        return {**dataclasses.asdict(self.arm), "runs": [dataclasses.asdict(r) for r in self.runs],
                "measured": self.measured}

    @classmethod
    def from_json(cls, saved: dict) -> "ArmResult":
        """What :meth:`to_json` wrote."""
        arm = {f.name: saved[f.name] for f in dataclasses.fields(Arm) if f.name in saved}
        if arm.get("paper") is not None:
            arm["paper"] = tuple(arm["paper"])
        return cls(Arm(**arm), [RunRecord(**r) for r in saved["runs"]], saved.get("measured", {}))


def run_arm(arm: Arm, base: Config, out: str | Path, seeds: Sequence[int], progress: bool = False,
            rerun: bool = False, build: Optional[Callable[[Config, int], nn.Module]] = None) -> ArmResult:
    """Train ``arm`` on ``base`` once per seed in ``out/<arm's folder>/seed<s>`` (finished runs are read
    back; ``rerun=True`` retrains). ``build`` makes the model of an arm whose ``detector`` is not RetinaNet."""
    return ArmResult(arm, run_seeds(arm.config(base, out), seeds, progress=progress, rerun=rerun, build=build,
                                    model=arm.detector))


def slug(text: str) -> str:
    """``text`` as a folder name: letters, digits and ".=-" kept, anything else "_"."""
    return "".join(c if c.isalnum() or c in ".=-" else "_" for c in text)


def write_results(folder: str | Path, name: str, command: str, text: str, payload: dict) -> None:
    """A study's results for ``results/``: ``name.txt`` (the command and what it printed) and
    ``name.json`` (the command, the torch version and ``payload``: every run's config and metrics)."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(f"$ {command}\n\n{text}\n")
    (folder / f"{name}.json").write_text(json.dumps({"command": command, "torch": torch.__version__, **payload},
                                                    indent=2))


def read_results(path: str | Path, command: str) -> dict:
    """The JSON :func:`write_results` wrote; a missing file names the ``command`` that makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results not found: {path} (make them with {command} --results {path.parent})")
    return json.loads(path.read_text())


T = TypeVar("T")


def parse_seeds(parser, text: Optional[str], default: Sequence[int]) -> tuple[int, ...]:
    """A CLI's ``--seeds`` ("0,1,2"; None: ``default``); anything else ends the command with one error line."""
    try:
        return tuple(int(s) for s in text.split(",")) if text else tuple(default)
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers such as 0,1,2, got {text!r}")


def experiment_parser(prog: str, description: str, out: str, seeds: Optional[str] = None):
    """The command line every experiment shares: ``--out`` (its runs' folder, read back when made),
    ``--results`` (the folder for ``results/``), ``--debug``; and ``--seeds`` when ``seeds`` (the
    default's help text) is given."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=out, help="folder of the runs (finished runs are read back)")
    parser.add_argument("--results", default=None, help="folder for the table, its JSON and its figures")
    if seeds is not None:
        parser.add_argument("--seeds", default=None, help=f"comma-separated seeds (default: {seeds})")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
    return parser


def run_or_exit(parser, debug: bool, job: Callable[[], T]) -> T:
    """``job()`` for a CLI: a ValueError or OSError (a repeated seed, an unwritable ``--out``) ends the
    command with one ``error:`` line and exit status 2 — with ``--debug``, the traceback instead."""
    try:
        return job()
    except (ValueError, OSError) as err:
        if debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {err}\n")


def command_line(parser, argv: Optional[Sequence[str]]) -> str:
    """The command a CLI was called with, as ``results/`` records it (``parser.prog`` and its arguments)."""
    return f"{parser.prog} " + " ".join(sys.argv[1:] if argv is None else argv)
