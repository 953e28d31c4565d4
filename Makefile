# Two entry points: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test install install-test clean

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[serve]'
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.core
install-test: $(VENV)/.test

demo: install
	$(VENV)/bin/lvseg demo

test: install-test
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy
	# Two processes: one pytest process over the whole suite crashed (SIGSEGV, at varying tests, no Python trace)
	# after the model-contract tests; each half passes alone. Stopgap until the crash is bisected (see the notes).
	$(PY) -m pytest -q --ignore=tests/test_model_contract.py --ignore=tests/test_models_cris.py
	$(PY) -m pytest -q tests/test_model_contract.py tests/test_models_cris.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
