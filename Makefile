# Each target does its own set-up: a .venv next to this file with the package installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dashboard]'
	touch $(STAMP)

install: $(STAMP)

# The demo study: an ELR grid on digits on an in-process Ray, then its regime report.
# Run again, it resumes (finished trials are not re-run); `make demo DEMO_FLAGS=--restart` starts over.
demo: $(STAMP)
	$(BIN)/regimes sweep studies/demo_digits.yaml $(DEMO_FLAGS)
	$(BIN)/regimes report results/demo-digits

# JupyterLab on the notebooks in analysis/ (installs the `notebook` extra once).
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[notebook]'
	$(BIN)/jupyter lab analysis/

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) results runs
