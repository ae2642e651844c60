# Two commands for a fresh machine with Python 3.11+ and make:
#   make demo   set up .venv, then run the main job on data/sample/
#   make test   set up .venv with the test tools, then run the test suite
# While working:  make test-fast   the suite without the end-to-end runs marked slow (~85 s on 2 idle cores,
#                                  ~150 s of CPU; three to four times that on busy cores)
# Then:  make lint   ruff and mypy as configured in pyproject.toml (CI runs it after the tests)
# After the demo:  make lab   JupyterLab on notebooks/ with the demo's store and emulator (toolkit lab)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test test-fast lint lab bench clean

demo: $(VENV)/.installed
	$(BIN)/toolkit demo

lab: $(VENV)/.installed
	$(BIN)/toolkit lab

# One pytest-xdist worker per core: most tests wait on subprocesses, kernels and the emulator.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto --dist worksteal $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n auto --dist worksteal -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench $(BENCH_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[notebooks]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet -e '.[notebooks,test,spark]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) var
