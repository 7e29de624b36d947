# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv and install what they need on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py src/sampan/http/_fastpath.c | cksum | cut -d" " -f1)
DEMO_SECONDS ?= 20
LINT_PATHS := src tests bench examples scripts

.PHONY: demo test lint typecheck bench-bus bench-bus-catchup bench-bus-busy-loop bench-flows bench-gateway bench-mesh bench-metrics clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	rm -rf data/demo
	$(BIN)/sampan up examples/demo/sampan.yaml $(if $(filter 0,$(DEMO_SECONDS)),,--run-for $(DEMO_SECONDS))

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

bench-bus: $(STAMP)
	$(BIN)/python bench/bus.py

bench-bus-catchup: $(STAMP)
	$(BIN)/python bench/bus_catchup.py

bench-bus-busy-loop: $(STAMP)
	$(BIN)/python bench/bus_busy_loop.py

bench-flows: $(STAMP)
	$(BIN)/python bench/flows.py

bench-gateway: $(STAMP)
	$(BIN)/python bench/gateway.py

bench-mesh: $(STAMP)
	$(BIN)/python bench/mesh.py

bench-metrics: $(STAMP)
	$(BIN)/python bench/metrics.py

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
