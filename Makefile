# dlrrec: `make demo` trains on real MovieLens-100K; `make test` runs the test suite;
# `make image` builds and checks the CPU image (docs/docker.md).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/movielens-100k.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench lint image image-cuda clean

# The venv is rebuilt only when the pins change.
$(STAMP): requirements.txt requirements-dev.txt setup.cfg
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	grep -v '^torchrec==' requirements.txt > $(VENV)/requirements-nodeps.txt
	$(BIN)/pip install -q -r $(VENV)/requirements-nodeps.txt -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps $$(grep '^torchrec==' requirements.txt)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dlrrec pipeline --config $(CONFIG)

test: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/*.py; do PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/ruff check dlrrec features similarity trainer launch serve tests benchmarks
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold style docker/Dockerfile.cpu docker/Dockerfile.cuda

# docker if a daemon answers, else podman; the python image if a registry answers, else
# a debootstrap base. Builds dlrrec:cpu and runs the smoke pipeline inside it.
image:
	bash docker/image.sh cpu

# dlrrec:cuda, its stack checked from package metadata (no GPU needed)
image-cuda:
	bash docker/image.sh cuda

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
