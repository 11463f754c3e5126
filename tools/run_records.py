"""Carry a long study's finished runs to another machine: their ``run.json`` records, not their weights.

A study of several two-core CPU hours may outlast a working session, and ``runs/`` does not travel
(it holds the weights). :func:`fl_lab.experiment.run_once` reads a finished run back from its
``run.json`` alone, so copying the records is enough to continue the study elsewhere:

    python tools/run_records.py runs/confirm_many results/confirm_many/records    # keep what finished
    python tools/run_records.py results/confirm_many/records runs/confirm_many    # before continuing

Every ``run.json`` under SOURCE is copied to the same place under DEST. A different record already
at DEST is never overwritten (the command stops with one error line): a run is made once. Once the
study has written its results (whose JSON holds every run's record), delete the records folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fl_lab.experiment import RECORD


def copy_records(source: Path, dest: Path) -> int:
    """Copy every ``run.json`` under ``source`` to the same relative place under ``dest``; the number copied.

    Raises FileNotFoundError when ``source`` is not a folder and FileExistsError, before copying
    anything, when ``dest`` holds a different record at one of those places."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder of runs")
    records = sorted(source.rglob(RECORD))
    for record in records:
        target = dest / record.relative_to(source)
        if target.is_file() and target.read_bytes() != record.read_bytes():
            raise FileExistsError(f"{target} holds another record than {record}; remove one of them first")
    for record in records:
        target = dest / record.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(record, target)
    return len(records)


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
    print(f"{count} run records copied from {args.source} to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
