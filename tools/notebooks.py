"""Refresh the committed notebooks: execute them in fast mode, then strip bulky outputs.

Committed notebooks keep the *text* outputs of their cells (nbval's reference, checked on
every test run) and drop images and widget state (bulky, and nbval does not compare them).

    python tools/notebooks.py notebooks/*.ipynb       # what `make notebooks` runs
    python tools/notebooks.py --check notebooks/*.ipynb   # exit 1 if any is not stripped
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbformat

BULKY_MIME = ("image/png", "image/jpeg", "image/svg+xml", "application/vnd.jupyter.widget-view+json")


def bulky_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Describe what a committed notebook should not hold (empty when it is clean)."""
    problems = []
    if "widgets" in nb.metadata:
        problems.append("widget state in the notebook metadata")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            for mime in out.get("data", {}):
                if mime in BULKY_MIME:
                    problems.append(f"cell {i}: {mime} output")
    return problems


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop images and widget views from outputs, widget state and run timestamps from metadata, in place."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps: noise in every diff
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data is not None:
                for mime in BULKY_MIME:
                    data.pop(mime, None)
                if not data:  # a widget or image with no text form: nothing left to keep
                    continue
            kept.append(out)
        if cell.cell_type == "code":
            cell.outputs = kept
    return nb


def refresh(path: Path) -> None:
    """Execute ``path`` in fast mode with the current Python's kernel, strip it, save it."""
    nb = nbformat.read(path, as_version=4)
    os.environ["FL_LAB_FAST"] = "1"
    _client(nb, path.parent).execute()
    nbformat.write(strip(nb), path)


def _client(nb: nbformat.NotebookNode, folder: Path):
    """An nbclient NotebookClient that does not stall on widget cells.

    After a cell that displays ipywidgets, nbclient sometimes receives the cell's reply only
    when its timeout runs out, although the cell finished long before (jupyter/nbclient#312;
    nbval, which CI uses, is not affected). Such cells are quick, so a short timeout for them
    bounds the stall; when it runs out, nbclient goes on with the outputs it has.
    """
    from nbclient import NotebookClient

    def timeout(cell: nbformat.NotebookNode) -> int:
        return 15 if "widgets." in cell.source else 1200

    return NotebookClient(nb, timeout_func=timeout, kernel_name="python3",
                          resources={"metadata": {"path": str(folder)}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks that hold bulky outputs")
    args = parser.parse_args(argv)
    status = 0
    for path in args.notebooks:
        if args.check:
            for problem in bulky_outputs(nbformat.read(path, as_version=4)):
                print(f"{path}: {problem}")
                status = 1
        else:
            print(f"refreshing {path}", flush=True)
            refresh(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
