# One-command entry points (README quickstart). Everything installs into .venv with the exact
# versions of constraints.txt; torch is the CPU build (torch==2.13.0, see requirements.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test test-fast lint clean

$(STAMP): requirements.txt requirements-dev.txt requirements-ray.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -r requirements.txt -r requirements-dev.txt -r requirements-ray.txt
	touch $(STAMP)

install: $(STAMP) system-deps

# bubblewrap, the sandbox agents run in (installed when root and missing; else a note)
system-deps:
	@bash scripts/install_system_deps.sh

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py

test: $(STAMP) system-deps
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
