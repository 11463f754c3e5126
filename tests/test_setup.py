"""The kit's set-up: dependency lists in sync, CI calling the README's command, notebooks stored as agreed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml
from packaging.requirements import Requirement

from fl_lab.fast_mode import fast_mode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load_tools_notebooks():
    spec = importlib.util.spec_from_file_location("nbtools", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def environment_requirements() -> tuple[dict[str, Requirement], list[str]]:
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    reqs = {}
    for spec in conda + [p for p in pip if not p.startswith("-e")]:
        req = Requirement(spec)
        if req.name not in ("python", "pip"):
            reqs[req.name.lower()] = req
    return reqs, pip


def makefile_torch_pins() -> list[str]:
    match = re.search(r"^TORCH\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile defines TORCH"
    return match.group(1).split()


def test_environment_yml_lists_the_pyproject_dependencies():
    ours, pip = environment_requirements()
    theirs = pyproject_requirements()
    assert set(ours) == set(theirs)
    for name, req in ours.items():
        if name in ("torch", "torchvision"):  # pinned for set-up; must satisfy the loose range
            (pin,) = req.specifier
            assert pin.operator == "==" and theirs[name].specifier.contains(pin.version), (req, theirs[name])
        else:
            assert req.specifier == theirs[name].specifier, (req, theirs[name])
    assert "-e ." in pip  # the kit itself


def test_torch_pins_agree_between_makefile_and_environment_yml():
    _, pip = environment_requirements()
    assert makefile_torch_pins() == ["torch==2.14.1", "torchvision==0.29.1"]
    assert [p for p in pip if p.startswith("torch")] == makefile_torch_pins()


def test_ci_runs_the_readme_test_command():
    run = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in run if line and not line.startswith("#")]
    assert "make test" in commands
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make lab" in first_block and "make test" in first_block


def test_make_lab_keeps_jupyterlab_safe_defaults():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "jupyter lab" in recipe and "root_dir=notebooks" in recipe
    for unsafe in ("--ip", "0.0.0.0", "token=", "--NotebookApp.token", "password"):
        assert unsafe not in recipe, unsafe
    assert "--allow-root" not in recipe  # only through ROOT_FLAG, when running as root
    assert re.search(r"ROOT_FLAG\s*:=\s*\$\(if \$\(filter 0,\$\(shell id -u\)\),--allow-root\)", makefile)


def test_setup_installs_jupyterlab_settings_without_the_news_question():
    # JupyterLab reads <prefix>/share/jupyter/lab/settings/overrides.json; the venv gets the kit's.
    overrides = json.loads((ROOT / "tools" / "jupyterlab_overrides.json").read_text())
    assert overrides["@jupyterlab/apputils-extension:notification"] == {"fetchNews": "false", "checkForUpdates": False}
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "tools/jupyterlab_overrides.json" in setup.splitlines()[0]  # a change re-runs the set-up
    assert "cp tools/jupyterlab_overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json" in setup


@pytest.mark.parametrize("value,expected", [("", False), ("0", False), ("off", False), ("1", True), ("yes", True)])
def test_fast_mode_flag(monkeypatch, value, expected):
    monkeypatch.setenv("FL_LAB_FAST", value)
    assert fast_mode() is expected
    monkeypatch.delenv("FL_LAB_FAST")
    assert fast_mode() is False


# A valid 1 × 1 PNG: small figures are stored as they are.
TINY_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def _figure_cell(png: bool = True) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("fig", execution_count=1)
    data = {"text/plain": "<Figure size 640x480 with 1 Axes>", **({"image/png": TINY_PNG} if png else {})}
    cell.outputs = [nbformat.v4.new_output("execute_result", data=data, execution_count=1),
                    nbformat.v4.new_output("stream", text="AP 78.4\n")]
    return cell


def test_tidy_keeps_text_and_figures_and_drops_widgets():
    tools = load_tools_notebooks()
    nb = nbformat.v4.new_notebook()
    nb.cells = [_figure_cell()]
    nb.cells[0].outputs.append(nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}))
    nb.metadata["widgets"] = {"state": {}}
    tools.tidy(nb)
    assert "widgets" not in nb.metadata and nb.cells[0].outputs[0].data["image/png"] == TINY_PNG
    assert [sorted(o.get("data", {"text": 0})) for o in nb.cells[0].outputs] == [["image/png", "text/plain"], ["text"]]


def test_tag_marks_the_cells_whose_output_both_modes_share():
    tools = load_tools_notebooks()
    rules = tools.sanitizers()
    full, fast = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    same, differs, ignored = (nbformat.v4.new_code_cell(f"c{i}") for i in range(3))
    ignored.metadata["tags"] = ["nbval-ignore-output"]
    full.cells = [same, differs, ignored, nbformat.v4.new_markdown_cell("prose")]
    fast.cells = [nbformat.v4.new_code_cell(c.source) if c.cell_type == "code" else c for c in full.cells]
    texts = {"same": ("took 12.5 s\n", "took 3 s\n"), "differs": ("AP 78.4\n", "AP 0.6\n"),
             "ignored": ("x\n", "x\n")}
    for cell_full, cell_fast, (full_text, fast_text) in zip(full.cells[:3], fast.cells[:3], texts.values(),
                                                           strict=True):
        cell_full.outputs = [nbformat.v4.new_output("stream", text=full_text)]
        cell_fast.outputs = [nbformat.v4.new_output("stream", text=fast_text)]
    chunked = nbformat.v4.new_code_cell("print")  # one print: two chunks from one kernel, one from the other
    chunked.outputs = [nbformat.v4.new_output("stream", text="a "), nbformat.v4.new_output("stream", text="b\n")]
    whole = nbformat.v4.new_code_cell("print")
    whole.outputs = [nbformat.v4.new_output("stream", text="a b\n")]
    full.cells.append(chunked)
    fast.cells.append(whole)
    assert tools.tag(full, fast, rules) == 2  # timings are sanitised and streams joined: cells 0 and 4 agree
    assert full.cells[4].metadata["tags"] == ["nbval-check-output"]
    assert [c.metadata.get("tags", []) for c in full.cells[:3]] == [
        ["nbval-check-output"], [], ["nbval-ignore-output"]]


def test_storage_problems_name_each_broken_rule():
    tools = load_tools_notebooks()
    nb = nbformat.v4.new_notebook()
    nb.cells = [_figure_cell()]
    assert tools.storage_problems(nb, 1000) == ["not refreshed in full mode (run `make notebooks`)"]
    nb.metadata["fl_lab"] = {"outputs": "full mode"}
    assert tools.storage_problems(nb, 1000) == []
    nb.cells.append(_figure_cell(png=False))
    nb.cells.append(nbformat.v4.new_code_cell("widgets.IntSlider()"))
    assert tools.storage_problems(nb, 2_000_000) == [
        "2,000,000 bytes, over the 1,500,000 allowed", "cell 1: a figure without its image", "cell 2: not executed",
        "cell 2: shows widgets but is not tagged nbval-ignore-output"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebooks_follow_the_storage_rule(path):
    """Full-mode outputs with their figures, no widget state or errors, widget cells not compared, ≤ 1.5 MB."""
    nb = nbformat.read(path, as_version=4)
    assert load_tools_notebooks().storage_problems(nb, path.stat().st_size) == []


def test_notebooks_are_numbered_lessons():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "01_focal_loss.ipynb"
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in NOTEBOOKS)


def test_shrink_png_scales_down_only_large_figures():
    import base64
    import io

    from PIL import Image

    tools = load_tools_notebooks()

    def png(width: int, height: int, noise: bool) -> str:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        image = Image.fromarray(pixels.numpy() if noise else (pixels.numpy() * 0 + 255))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    small = png(2000, 300, noise=False)  # wide, but a flat colour: a few kB
    assert tools.shrink_png(small) == small
    large = png(2000, 300, noise=True)  # ~1.8 MB of noise
    shrunk = Image.open(io.BytesIO(base64.b64decode(tools.shrink_png(large))))
    assert shrunk.format == "PNG" and shrunk.size == (1400, 210)


def test_lessons_after_lesson_4_are_refreshed_with_its_backbone_already_cached(monkeypatch, tmp_path):
    tools = load_tools_notebooks()
    assert "shapes_weights(" in (ROOT / "notebooks" / tools.MAKES_BACKBONE).read_text()  # lesson 4 makes it
    made = []
    monkeypatch.setattr("fl_lab.pretrain.shapes_weights",
                        lambda backbone: made.append((backbone, os.environ["TORCH_HOME"])))
    monkeypatch.setenv("TORCH_HOME", "the learner's")
    for name in ("01_focal_loss.ipynb", "03_retinanet.ipynb", tools.MAKES_BACKBONE):
        tools.as_after_lesson_4(ROOT / "notebooks" / name, str(tmp_path))
    assert made == []  # lesson 4 itself, and the lessons before it, start from the empty cache
    tools.as_after_lesson_4(ROOT / "notebooks" / "06_ablations.ipynb", str(tmp_path))
    assert made == [("resnet18", str(tmp_path))]  # made in the refresh's own cache, not the learner's


def test_refresh_copies_lesson_4s_backbone_only_for_later_lessons(tmp_path, monkeypatch, capsys):
    tools = load_tools_notebooks()
    later, lesson_4 = ROOT / "notebooks" / "06_ablations.ipynb", ROOT / "notebooks" / "04_training.ipynb"
    with pytest.raises(SystemExit) as no_cache:
        tools.main(["--backbone-from", str(tmp_path), str(later)])
    home = tmp_path / "torch"
    backbone = tools.lesson_4_backbone(home)
    backbone.parent.mkdir(parents=True)
    backbone.write_bytes(b"weights")
    (backbone.parent / "resnet18-f37072fd.pth").write_bytes(b"imagenet")  # another cached file: not copied
    with pytest.raises(SystemExit) as too_early:
        tools.main(["--backbone-from", str(home), str(lesson_4), str(later)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert no_cache.value.code == too_early.value.code == 2 and len(errors) == 2
    assert f"no {backbone.name} in" in errors[0] and "04_training.ipynb must show the backbone being made" in errors[1]
    assert backbone.name.startswith("fl_lab_resnet18_shapes-")

    seen = []
    monkeypatch.setattr(tools, "refresh", lambda path, torch_home: seen.append(
        (path.name, sorted((f.name, f.read_bytes()) for f in (Path(torch_home) / "hub" / "checkpoints").iterdir())))
        or "refreshed")
    assert tools.main(["--backbone-from", str(home), str(later)]) == 0
    assert seen == [("06_ablations.ipynb", [(backbone.name, b"weights")])]
