# make demo  - create .venv, install, run the end-to-end demo (synthetic regions, a few minutes)
# make test  - create .venv, install, lint and run the test suite (what CI runs)
# make bench SUITE=wsdm - run (or complete) a benchmark suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch: pinned so pip never pulls a multi-GB CUDA build on a CPU machine.
TORCH_SPEC ?= torch==2.13.0
SUITE ?= wsdm

.PHONY: install demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/regiontune demo

lint: install
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest --durations=10

bench: install
	$(PY) -m benchmarks.run $(SUITE)

clean:
	rm -rf $(VENV) runs .pytest_cache
