"""Wall time of each lesson under nbval in fast mode, as CI runs them, and of the whole test suite.

Each notebook runs in its own ``pytest`` process (``FL_LAB_FAST=1 python -m pytest <notebook>``,
the project's nbval settings from pyproject.toml), so a time includes pytest's and the
kernel's start-up (a few seconds) — what a contributor waits for. ``--make-test`` also
times the full ``make test`` command line (unit tests + every notebook) from the warm
``.venv``. Targets (issue 7): each notebook < 3 min, the nbval suite < 10 min on 2 cores.
Lesson 6 reads back finished runs it finds in ``runs/lesson06``: for the times a clean
clone (CI) sees, remove ``runs/`` first.

    python bench/notebooks.py [--make-test] [notebooks/01_*.ipynb ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, machine, write_json

ROOT = Path(__file__).resolve().parents[1]


def timed_pytest(args: list[str]) -> tuple[float, int]:
    """(seconds, exit status) of ``python -m pytest *args`` in fast mode from the repository root."""
    env = {**os.environ, "FL_LAB_FAST": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-3000:])
    return seconds, done.returncode


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb in order")
    parser.add_argument("--make-test", action="store_true", help="also time the whole test suite (minutes)")
    parser.add_argument("--results", type=Path, default=None, help="folder for the JSON (default bench/results)")
    args = parser.parse_args(argv)
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))

    rows = []
    for path in notebooks:
        seconds, status = timed_pytest([str(path)])
        rows.append({"notebook": path.name, "seconds": seconds, "passed": status == 0, "target_s": 180})
        print(f"{path.name}: {seconds:.1f} s{'' if status == 0 else ' (FAILED)'}", flush=True)
    table_rows = [[r["notebook"], r["seconds"], "yes" if r["passed"] else "NO", "yes" if r["seconds"] < 180 else "NO"]
                  for r in rows]
    suite = sum(r["seconds"] for r in rows)
    table_rows.append(["all notebooks", suite, "yes" if all(r["passed"] for r in rows) else "NO",
                       "yes" if suite < 600 else "NO"])
    payload: dict = {"benchmark": "notebooks", "rows": rows, "nbval_suite_s": suite}
    if args.make_test:
        seconds, status = timed_pytest([])  # `make test` is `FL_LAB_FAST=1 python -m pytest` once .venv exists
        payload["make_test_s"], payload["make_test_passed"] = seconds, status == 0
        table_rows.append(["make test (warm .venv)", seconds, "yes" if status == 0 else "NO", "—"])
    table = format_table(["notebook (fast mode, nbval)", "seconds", "passed", "under target"], table_rows)
    print(f"{machine(torch.device('cpu'))}\n{table}")
    payload["table"] = table
    path = write_json("notebooks", torch.device("cpu"), payload, **({"results": args.results} if args.results else {}))
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
