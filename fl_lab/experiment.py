"""Training runs as experiments: one configuration over several seeds, each run kept in its folder.

A claim about training rests on seeds, not on one run: :func:`run_seeds` trains a
:class:`fl_lab.train.Config` once per seed (the seed sets the weights, the data, the order and
the flips) and :func:`seed_stats` gives the mean ± std that :func:`fl_lab.analysis.compare_seeds`
judges against its noise. Every run writes ``run.json`` (its configuration and what it gave)
into its folder; a later call with the same configuration reads it back instead of training
again, so a study can be stopped and continued, and lessons can read committed results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from torch import nn

from .analysis import SeedStats
from .train import Config, Diverged, backbone_weights_file, run

__all__ = ["RECORD", "RunRecord", "describe_loss", "read_results", "run_once", "run_seeds", "seed_stats",
           "write_results"]

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
    and weights_sha256 (of the backbone weights file it started from; None from scratch). Records
    written before these three existed read back with their defaults ("", "", None).
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
    """Whether a saved configuration is ``config``: equal fields, and any field the kit gained
    since then at its default (the run was made with that behaviour)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    current = dataclasses.asdict(config)
    return set(saved) <= set(current) and all(current[k] == v for k, v in saved.items()) and \
        all(current[k] == defaults[k] for k in set(current) - set(saved))


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
            return RunRecord(**{**saved, "config": dataclasses.asdict(config)})
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
                       weights_sha256=None if weights is None else _sha256(weights))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def describe_loss(config: Config) -> str:
    """The classification loss a RetinaNet of ``config`` trains with, and the settings it uses."""
    fn = config.loss_kwargs()["loss_fn"]
    settings = {k: v for k, v in fn.keywords.items() if k != "check_values"}
    return f"{config.loss_fn}({', '.join(f'{k}={v}' for k, v in settings.items())})"


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
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
