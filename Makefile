# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast unit integration lint typecheck bench dist sandbox-up sandbox-down clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Runs the factory on its embedded simulated pool, cloud and PanDA and shows what it did.
demo: $(STAMP)
	$(BIN)/pilotfactory demo

# The full suite: lint, types, unit tests and the integration tests against a real HTCondor
# pool (booted by scripts/condor-sandbox; the chroot is cached outside the repository).
test: $(STAMP) lint typecheck
	$(BIN)/pytest -p no:cacheprovider

# The fast subset for developers: no real HTCondor pool.
test-fast: $(STAMP)
	PILOTFACTORY_SKIP_CONDOR=1 $(BIN)/pytest -p no:cacheprovider -m "not condor"

lint: $(STAMP)
	$(BIN)/ruff check pilotfactory tests benchmarks scripts
	$(BIN)/ruff format --check pilotfactory tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy pilotfactory

# BENCH_ARGS=--quick: the scale table's 20k-job sizes only (see benchmarks/scale.py)
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# dist/: an sdist and a wheel built from it (etc/ installs to <prefix>/share/pilotfactory/);
# offline, with the venv's own setuptools, wheel and pip.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python scripts/build_dist.py dist

sandbox-up:
	scripts/condor-sandbox up

sandbox-down:
	scripts/condor-sandbox down

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
