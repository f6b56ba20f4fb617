PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test install build lint typecheck pytest clean bench demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Rebuild the Cython kernel in place: the editable install keeps the .so beside the .pyx.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

lint: $(STAMP)
	$(VENV)/bin/ruff check gslb tests benchmarks
	$(VENV)/bin/ruff format --check gslb tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: build
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: build
	$(PY) benchmarks/bench_scoring.py

clean:
	rm -rf build gslb/*.so gslb/_scoring.c .mypy_cache .pytest_cache .ruff_cache
