# fl_lab — `make lab` opens the lessons, `make test` runs every check.
# Both first set up .venv (once; again when pyproject.toml or this file change).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The exact PyTorch the kit is tested with; pyproject.toml keeps loose ranges.
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.fl_lab-installed
# JupyterLab refuses to start as root without this flag; it is added only then.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: setup lab test notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile tools/jupyterlab_overrides.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 10) else f"fl_lab needs Python >= 3.10; $(BIN)/python is {v.major}.{v.minor}. Remove $(VENV) and run again with PYTHON=python3.1x")'
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e ".[lab,test]"
	# JupyterLab's defaults for the kit's learners: no "get notified about Jupyter news?" pop-up, no update check.
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp tools/jupyterlab_overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

# JupyterLab's own defaults protect the learner: it listens on localhost only and asks for
# the random token it prints. Do not add --ip=0.0.0.0 or an empty token here.
lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=notebooks

# The linter (settings in pyproject.toml), then unit tests and every notebook under nbval, in fast mode.
test: $(STAMP)
	$(BIN)/ruff check .
	FL_LAB_FAST=1 $(BIN)/python -m pytest

# Contributors: re-execute the notebooks in fast and full mode, store the full run with its figures,
# and tag the cells whose output both modes share (tools/notebooks.py).
notebooks: $(STAMP)
	$(BIN)/python tools/notebooks.py notebooks/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
