# Each target does its own set-up: a .venv next to this file with the package installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) results runs
