PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `gslb demo` flags, e.g. DEMO_ARGS="--listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19901
# --region-port-base 18100"; make loadtest takes the same, so it finds that demo.
DEMO_ARGS ?=
LOADTEST_ARGS ?=

.PHONY: test test-twin install build lint typecheck pytest clean bench demo loadtest simulate

# `make demo` and `make test` are the whole set-up on a fresh machine.
demo: build
	$(VENV)/bin/gslb demo $(DEMO_ARGS)

test: lint typecheck pytest

# A simulated ordinary day of world traffic through gslb and five baselines (a few minutes on
# one core); prints where the report is and opens nothing. SIM_ARGS="--hours 6" for less.
SIM_ARGS ?=
simulate: build
	$(VENV)/bin/gslb simulate --config config/example.toml \
		--scenario config/scenarios/ordinary-day.toml --out build/simulate $(SIM_ARGS)

# The whole suite once more on the pure-Python twin, the proxy end to end included (the core
# tests run on both backends in `make test` already). CI runs it after `make test`.
test-twin: $(STAMP)
	GSLB_NO_EXTENSIONS=1 $(VENV)/bin/pytest -q

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Cython in the venv too: `make build` recompiles with it (pip's isolated build env is gone).
$(STAMP): $(PY) pyproject.toml setup.py
	$(PY) -m pip install -q -e '.[test,bench,sim]' 'Cython>=3.0'
	touch $(STAMP)

install: $(STAMP)

# Rebuild the Cython kernel in place: the editable install keeps the .so beside the .pyx, and
# gslb.core.scoring refuses a .so built from other .pyx text (it falls back to the twin and warns).
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

lint: $(STAMP)
	$(VENV)/bin/ruff check gslb tests benchmarks
	$(VENV)/bin/ruff format --check gslb tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: build
	$(VENV)/bin/pytest -q

# Runs against the demo on DEMO_ARGS's ports (default 8080/9901), or starts one for the run.
loadtest: build
	$(PY) benchmarks/loadtest.py $(DEMO_ARGS) $(LOADTEST_ARGS)

# Benchmarks: the scoring kernel, then the proxy path side by side with nginx (results:
# benchmarks/RESULTS.md). Installs nginx, its GeoIP2 module and wrk (Debian, as root) when
# missing; on a usual Debian host installing nginx also starts a system nginx on port 80.
bench: build
	@command -v nginx >/dev/null && command -v wrk >/dev/null \
	  && test -e /usr/lib/nginx/modules/ngx_http_geoip2_module.so \
	  || { apt-get update && apt-get install -y nginx libnginx-mod-http-geoip2 wrk; }
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_proxy.py --profile-dir benchmarks/profile

clean:
	rm -rf build gslb/*.so gslb/_scoring.c gslb/core/*.so gslb/core/_scoring.c .mypy_cache .pytest_cache .ruff_cache
