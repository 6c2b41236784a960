# `make demo` and `make test` set themselves up: they install into the active virtual environment,
# or into a .venv they create, then run.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
PY := python
else
PY := .venv/bin/python
endif
STAMP := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)/.vlp_jax

.PHONY: demo test test-slow lint install install-test clean

$(PY):
	python3 -m venv .venv

$(STAMP)-runtime: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(STAMP)-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)-runtime

install: $(STAMP)-runtime
install-test: $(STAMP)-test

demo: $(STAMP)-runtime
	$(PY) -m vlp_jax.main --config configs/demo.py --workdir runs/demo

test: $(STAMP)-test
	$(PY) -m ruff check .
	$(PY) -m pytest -q

test-slow: $(STAMP)-test
	$(PY) -m pytest -q -m slow

lint: $(STAMP)-test
	$(PY) -m ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
