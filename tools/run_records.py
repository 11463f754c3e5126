"""Carry a long study's finished runs to another machine: their records and logs, not their weights.

A study of several two-core CPU hours may outlast a working session, and ``runs/`` does not travel
(it holds the weights). :func:`fl_lab.experiment.run_once` reads a finished run back from its
``run.json`` alone (and :func:`fl_lab.compare.compare` its inference time from ``timing.json``), so
copying every file of the run folders but the weights (``*.pt``) is enough to continue the study
elsewhere:

    python tools/run_records.py runs/confirm_many results/confirm_many/records    # keep what finished
    python tools/run_records.py results/confirm_many/records runs/confirm_many    # before continuing

Every file under SOURCE but ``*.pt`` is copied to the same place under DEST, only from folders holding
a ``run.json`` (finished runs). A different file already at DEST is never overwritten (the command
stops with one error line): a run is made once. Once the study has written its results (whose JSON
holds every run's record), delete the records folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fl_lab.experiment import RECORD


def copy_records(source: Path, dest: Path) -> int:
    """Copy the finished runs under ``source`` (folders with a ``run.json``), every file but ``*.pt``,
    to the same relative places under ``dest``; the number of runs copied.

    Raises FileNotFoundError when ``source`` is not a folder and FileExistsError, before copying
    anything, when ``dest`` holds a different file at one of those places."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder of runs")
    runs = sorted(record.parent for record in source.rglob(RECORD))
    files = [f for run in runs for f in sorted(run.iterdir()) if f.is_file() and f.suffix != ".pt"]
    for file in files:
        target = dest / file.relative_to(source)
        if target.is_file() and target.read_bytes() != file.read_bytes():
            raise FileExistsError(f"{target} holds another file than {file}; remove one of them first")
    for file in files:
        target = dest / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return len(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/run_records.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder of runs (or of records) to copy from")
    parser.add_argument("dest", type=Path, help="folder to copy the records into")
    args = parser.parse_args(argv)
    try:
        count = copy_records(args.source, args.dest)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"{count} finished runs copied from {args.source} to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
