"""The kit's set-up: dependency lists in sync, CI calling the README's command, notebooks stored as agreed."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
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


def test_strip_keeps_text_and_drops_images_and_widgets():
    tools = load_tools_notebooks()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "<Figure>", "image/png": "iVBOR"}),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}),
        nbformat.v4.new_output("stream", text="kept\n"),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"state": {}}
    assert len(tools.bulky_outputs(nb)) == 3
    tools.strip(nb)
    assert tools.bulky_outputs(nb) == []
    assert [o.get("data", {}).get("text/plain", o.get("text")) for o in nb.cells[0].outputs] == ["<Figure>", "kept\n"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebooks_follow_the_storage_rule(path):
    """Executed (nbval has a reference), stripped of images and widget state, widget cells not compared."""
    nb = nbformat.read(path, as_version=4)
    assert load_tools_notebooks().bulky_outputs(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "run `make notebooks` before committing"
    for cell in code:
        if "widgets." in cell.source:
            assert "nbval-ignore-output" in cell.metadata.get("tags", []), cell.source
    assert path.stat().st_size < 200_000


def test_notebooks_are_numbered_lessons():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "01_focal_loss.ipynb"
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", p.name) for p in NOTEBOOKS)
