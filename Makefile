# Two entry points (see README): `make demo` and `make test`. Both set everything up first
# and are idempotent. `make docs` builds the documentation (docs/, mkdocs.yml) into site/.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.posegraph-installed
TORCH := torch==2.13.0
DOCS_STAMP := $(VENV)/.posegraph-docs-installed
DOCS_PACKAGES := mkdocs==1.6.1 mkdocs-material==9.8.2 mkdocstrings-python==2.0.11

.PHONY: setup demo test docs clean-venv
setup: $(STAMP)

# System libraries: SuiteSparse (CHOLMOD) headers to build scikit-sparse, OpenBLAS for speed.
.system-deps:
	@if ! dpkg -s libsuitesparse-dev libopenblas0-pthread >/dev/null 2>&1; then \
	  echo "installing libsuitesparse-dev libopenblas0-pthread"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q libsuitesparse-dev libopenblas0-pthread; \
	fi

$(STAMP): pyproject.toml setup.py posegraph/lie/_native_geometry.c posegraph/lie/_native_normal.c Makefile
	@$(MAKE) --no-print-directory .system-deps
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) numpy scipy pytest cython setuptools wheel PyYAML tqdm matplotlib mkl \
	  "dask[distributed]" dask-jobqueue threadpoolctl hypothesis gtsam==4.3.0
	$(BIN)/pip install -q --no-build-isolation scikit-sparse==0.4.16
	$(BIN)/pip install -q --no-build-isolation theseus-ai==0.2.3
	$(BIN)/pip install -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)

demo: setup
	@mkdir -p out
	$(BIN)/posegraph optimize data/sphere_se3.g2o -o out/sphere_se3.optimized.g2o

test: setup
	$(BIN)/python -m pytest -q

# The API reference is rendered from the docstrings: first tests/test_docs.py's quick checks
# (public names without a docstring fail them), then the build, where --strict fails on any
# warning (a broken link, anchor or reference, a docstring that does not parse).
$(DOCS_STAMP): $(STAMP) Makefile
	$(BIN)/pip install -q $(DOCS_PACKAGES)
	@touch $(DOCS_STAMP)

docs: setup $(DOCS_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests/test_docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean-venv:
	rm -rf $(VENV)
