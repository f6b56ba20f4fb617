PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOADTEST_ARGS ?=

.PHONY: test install build lint typecheck pytest clean bench demo loadtest

# `make demo` and `make test` are the whole set-up on a fresh machine.
demo: build
	$(VENV)/bin/gslb demo

test: lint typecheck pytest

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q -e '.[test,bench]'
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

loadtest: build
	$(PY) benchmarks/loadtest.py $(LOADTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_proxy.py

clean:
	rm -rf build gslb/*.so gslb/_scoring.c .mypy_cache .pytest_cache .ruff_cache
