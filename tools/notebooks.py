"""Refresh the committed notebooks: what a learner sees before running, and what the tests compare.

A committed lesson holds the outputs of a **full-mode** CPU run, figures included, so it reads like
a book page before anything runs. CI runs every notebook in **fast mode** under ``nbval --nbval-lax``:
every cell must run without error, and only the cells tagged ``nbval-check-output`` have their
output compared with the stored one. :func:`refresh` runs a notebook in both modes and tags a cell
when its text output is the same in both (after the sanitising of ``tests/nbval_sanitize.cfg``) and
it is not marked ``nbval-ignore-output`` (widgets, and outputs that vary from one machine to another).

    python tools/notebooks.py notebooks/*.ipynb           # what `make notebooks` runs (tens of minutes)
    python tools/notebooks.py --check notebooks/*.ipynb   # exit 1 if a notebook breaks the storage rule
    python tools/notebooks.py --backbone-from ~/.cache/torch notebooks/06_ablations.ipynb   # lessons after 4, faster

Full mode reads the committed ``results/`` for what takes hours; it runs with an empty torch hub
cache, so the stored outputs show lesson 4 pretraining its backbone as a learner's first run does,
and later lessons find it cached, as they do for a learner who took the course in order (refreshed
without lesson 4, they get it made first, or copied from a torch home that holds it with
``--backbone-from``: the pretraining is bitwise reproducible, so the outputs are the same).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHECK, IGNORE = "nbval-check-output", "nbval-ignore-output"
MAX_BYTES = 1_500_000  # a committed notebook, figures included
MAX_PNG_BYTES = 150_000  # a larger figure is scaled down and its colours quantised
MAX_PNG_WIDTH = 1400  # pixels: wider than a notebook column shows anyway
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
FIGURE_REPR = re.compile(r"<Figure size \d+(\.\d+)?x\d+(\.\d+)? with \d+ Axes>")
DEFAULT_TORCH_HOME = "~/.cache/torch"  # where a learner's torch keeps its hub cache
MODE_KEY = "fl_lab"  # notebook metadata: {"outputs": "full mode"} once refreshed
MAKES_BACKBONE = "04_training.ipynb"  # the lesson that pretrains the Shapes backbone the later ones fine-tune


def sanitizers(path: Path = ROOT / "tests" / "nbval_sanitize.cfg") -> list[tuple[re.Pattern, str]]:
    """The (regex, replacement) pairs nbval applies before it compares outputs."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return [(re.compile(parser[s]["regex"]), parser[s]["replace"]) for s in parser.sections()]


def text_outputs(cell: nbformat.NotebookNode, rules: list[tuple[re.Pattern, str]]) -> list[str]:
    """A code cell's text outputs as nbval compares them: streams and text/plain, sanitised."""
    texts, last_stream = [], None
    for out in cell.get("outputs", []):
        text = out.get("text") if out.output_type == "stream" else out.get("data", {}).get("text/plain")
        if out.output_type == "error":
            text = f"{out.ename}: {out.evalue}"
        if text is None:
            continue
        text = "".join(text)
        stream = out.get("name") if out.output_type == "stream" else None
        if stream is not None and stream == last_stream:  # one print may arrive in several chunks, as nbval joins them
            texts[-1] += text
        else:
            texts.append(text)
        last_stream = stream
    sanitised = []
    for text in texts:
        for pattern, replacement in rules:
            text = pattern.sub(replacement, text)
        sanitised.append(text)
    return sanitised


def storage_problems(nb: nbformat.NotebookNode, size: int) -> list[str]:
    """What a committed notebook must not be (empty when it follows the rule): unexecuted, run in fast
    mode, holding widget state or an error, missing a figure's image, or over :data:`MAX_BYTES`."""
    problems = []
    if nb.metadata.get(MODE_KEY, {}).get("outputs") != "full mode":
        problems.append("not refreshed in full mode (run `make notebooks`)")
    if "widgets" in nb.metadata:
        problems.append("widget state in the notebook metadata")
    if size > MAX_BYTES:
        problems.append(f"{size:,} bytes, over the {MAX_BYTES:,} allowed")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count is None:
            problems.append(f"cell {i}: not executed")
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if out.output_type == "error":
                problems.append(f"cell {i}: an error ({out.ename})")
            if WIDGET_MIME in data:
                problems.append(f"cell {i}: a widget view")
            if FIGURE_REPR.fullmatch(str(data.get("text/plain", ""))) and "image/png" not in data:
                problems.append(f"cell {i}: a figure without its image")
        if "widgets." in cell.source and IGNORE not in cell.metadata.get("tags", []):
            problems.append(f"cell {i}: shows widgets but is not tagged {IGNORE}")
    return problems


def shrink_png(data: str) -> str:
    """A base64 PNG over :data:`MAX_PNG_BYTES` scaled to at most :data:`MAX_PNG_WIDTH` pixels wide and
    quantised to 256 colours (figures over photographs are the large ones); smaller ones unchanged."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(data)
    if len(raw) <= MAX_PNG_BYTES:
        return data
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    if image.width > MAX_PNG_WIDTH:
        image = image.resize((MAX_PNG_WIDTH, round(image.height * MAX_PNG_WIDTH / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop widgets (their views need a kernel to show anything, and their text is a repr no learner
    should read; the cell shows them when it runs), widget state and run timestamps, and shrink
    large figures (:func:`shrink_png`), in place."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timestamps: noise in every diff
        if cell.cell_type == "code":
            cell.outputs = [out for out in cell.outputs if WIDGET_MIME not in out.get("data", {})]
            for out in cell.outputs:
                if "image/png" in out.get("data", {}):
                    out.data["image/png"] = shrink_png(out.data["image/png"])
                    out.get("metadata", {}).pop("image/png", None)  # its size was the unscaled one's
    return nb


def tag(nb: nbformat.NotebookNode, fast: nbformat.NotebookNode, rules) -> int:
    """Tag with :data:`CHECK` the code cells of ``nb`` (full mode) whose text output ``fast`` repeats; untag
    the others. Returns how many are tagged."""
    tagged = 0
    for full_cell, fast_cell in zip(nb.cells, fast.cells, strict=True):
        if full_cell.cell_type != "code":
            continue
        tags = [t for t in full_cell.metadata.get("tags", []) if t != CHECK]
        if IGNORE not in tags and text_outputs(full_cell, rules) == text_outputs(fast_cell, rules):
            tags.append(CHECK)
            tagged += 1
        if tags:
            full_cell.metadata["tags"] = tags
        else:
            full_cell.metadata.pop("tags", None)
    return tagged


def execute(nb: nbformat.NotebookNode, folder: Path, fast: bool, torch_home: str) -> nbformat.NotebookNode:
    """``nb`` executed in place by a fresh kernel of this Python, in fast or full mode."""
    os.environ["FL_LAB_FAST"] = "1" if fast else "0"
    os.environ["TORCH_HOME"] = torch_home
    _client(nb, folder).execute()
    return nb


def show_cache_as_default(nb: nbformat.NotebookNode, torch_home: str) -> nbformat.NotebookNode:
    """Write the refresh's temporary torch hub cache as the default one a learner has, in place."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out.text = "".join(out.text).replace(torch_home, DEFAULT_TORCH_HOME)
    return nb


def as_after_lesson_4(path: Path, torch_home: str) -> None:
    """For a lesson after lesson 4, lesson 4's backbone in the cache (made now unless an earlier
    notebook of this refresh made it), so that its outputs are those a learner taking the course in
    order sees, without a pretraining of its own."""
    if path.name > MAKES_BACKBONE:
        from fl_lab.pretrain import shapes_weights

        os.environ["TORCH_HOME"] = torch_home
        shapes_weights("resnet18")


def lesson_4_backbone(torch_home: Path) -> Path:
    """Where lesson 4's Shapes-pretrained backbone lies under ``torch_home``
    (:func:`fl_lab.pretrain.shapes_weights_path`, whose file name names its recipe)."""
    from fl_lab.pretrain import shapes_weights_path

    return torch_home / "hub" / "checkpoints" / shapes_weights_path("resnet18").name


def refresh(path: Path, torch_home: str) -> str:
    """Run ``path`` in fast mode, then in full mode; store the full run, tagged (:func:`tag`)."""
    as_after_lesson_4(path, torch_home)
    fast = execute(nbformat.read(path, as_version=4), path.parent, True, torch_home)
    nb = execute(nbformat.read(path, as_version=4), path.parent, False, torch_home)
    tagged = tag(show_cache_as_default(tidy(nb), torch_home), show_cache_as_default(fast, torch_home), sanitizers())
    nb.metadata[MODE_KEY] = {"outputs": "full mode"}
    nbformat.write(nb, path)
    return f"{path}: {tagged} cells compared by the tests, {path.stat().st_size / 1e6:.2f} MB"


def _client(nb: nbformat.NotebookNode, folder: Path):
    """An nbclient NotebookClient that does not stall on widget cells.

    After a cell that displays ipywidgets, nbclient sometimes receives the cell's reply only
    when its timeout runs out, although the cell finished long before (jupyter/nbclient#312;
    nbval, which CI uses, is not affected). Such cells are quick, so a short timeout for them
    bounds the stall; when it runs out, nbclient goes on with the outputs it has.
    """
    from nbclient import NotebookClient

    def timeout(cell: nbformat.NotebookNode) -> int:  # the sliders: fl_lab.widgets' *_explorer functions
        return 15 if "_explorer(" in cell.source else 3600

    return NotebookClient(nb, timeout_func=timeout, kernel_name="python3",
                          resources={"metadata": {"path": str(folder)}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report notebooks that break the storage rule")
    parser.add_argument("--backbone-from", type=Path, metavar="TORCH_HOME",
                        help="copy lesson 4's backbone (and nothing else) from this torch home (e.g. ~/.cache/torch) "
                        "instead of pretraining it; only for lessons after lesson 4")
    args = parser.parse_args(argv)
    backbone = None
    if args.backbone_from is not None and not args.check:
        backbone = lesson_4_backbone(args.backbone_from.expanduser())
        if not backbone.is_file():
            parser.error(f"--backbone-from: no {backbone.name} in {backbone.parent} (run lesson 4 or "
                         "python -m fl_lab.pretrain first)")
        early = [p.name for p in args.notebooks if p.name <= MAKES_BACKBONE]
        if early:
            parser.error(f"--backbone-from: {', '.join(early)} must show the backbone being made; "
                         "refresh it without --backbone-from")
    status = 0
    with tempfile.TemporaryDirectory(prefix="fl_lab_torch_home_") as torch_home:
        if backbone is not None:  # only this file: other cached weights (ImageNet, COCO) would change what lessons do
            target = lesson_4_backbone(Path(torch_home))
            target.parent.mkdir(parents=True)
            for file in (backbone, backbone.with_name(backbone.name + ".json")):
                if file.is_file():
                    shutil.copy2(file, target.parent / file.name)
        for path in args.notebooks:
            if args.check:
                for problem in storage_problems(nbformat.read(path, as_version=4), path.stat().st_size):
                    print(f"{path}: {problem}")
                    status = 1
            else:
                print(refresh(path, torch_home), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
