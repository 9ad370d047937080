# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
DATA ?= data
DEMO_CUSTOMERS ?= 20000
DEMO_MONTHS ?= 24

.PHONY: install native demo test lint bench bench-stream bench-training bench-import bench-monitoring bench-flush bench-latency schema clean

install: native

# the compiled fold (features/_fold.c): rebuilt when its source changes
native: $(STAMP)
	$(PY) -m features._build || echo "warning: the compiled fold is not built: everything folds in Python (slower)" >&2

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.8
	$(UV) pip install -q --python $(PY) -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

demo: native
	$(VENV)/bin/churn demo --customers $(DEMO_CUSTOMERS) --months $(DEMO_MONTHS) --data-dir $(DATA)

# real components of the end-to-end tests, from Debian: Chromium and ChromeDriver (the
# inbox), Prometheus and promtool (monitoring: scraping, alert rules and their tests)
SYSTEM_STAMP := $(VENV)/.system2
$(SYSTEM_STAMP):
	command -v chromedriver >/dev/null && command -v chromium >/dev/null && \
	  command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver prometheus >/dev/null)
	mkdir -p $(VENV) && touch $(SYSTEM_STAMP)

test: lint native $(SYSTEM_STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: native
	$(PY) -m bench.run --out BENCHMARKS.md

# sections appended to BENCHMARKS.md by hand from these (they print Markdown)
bench-stream: native
	$(PY) -m bench.stream --customers 600 --runs 3

bench-monitoring: native
	$(PY) -m bench.stream --customers 600 --runs 3 --overhead

bench-flush: native
	$(PY) -m bench.compare --runs 3 --faust-noop --config default: --config catchup-off:CHURN_CATCHUP_SECONDS=0

bench-latency: native
	$(PY) -m bench.stream --customers 600 --runs 0 --memory-customers 0 --paired --latency-runs 3

bench-import: native
	$(PY) -m bench.importer --rows 10000000

bench-training: native
	$(PY) -m bench.training $(TRAIN_SET)

schema: $(STAMP)
	$(VENV)/bin/churn schema --out docs/events.schema.json

clean:
	rm -rf $(VENV) $(DATA) .mypy_cache .ruff_cache .pytest_cache features/_fold*.so
