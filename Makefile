# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench notebook clean

$(VENV)/.runtime-installed: requirements.txt requirements-hub.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-hub.txt
	# keras-hub without tensorflow-text (it would pull the full tensorflow beside tensorflow-cpu): see requirements-hub.txt.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime-installed
	$(PY) examples/demo.py

# Runs examples/quickstart.ipynb and saves it with its outputs, as it is committed.
notebook: $(VENV)/.dev-installed
	$(PY) examples/execute_notebook.py

# Two workers (pytest-xdist): the suite is mostly single-threaded graph tracing, so two cores halve it.
# Tests sharing an expensive fixture go to one worker together (tests/conftest.py).
test: $(VENV)/.dev-installed
	$(PY) -m pytest -q -n 2

# The inner loop: everything but the tests marked slow (whole scripts, subprocesses, every backbone).
test-fast: $(VENV)/.dev-installed
	$(PY) -m pytest -q -n 2 -m "not slow"

bench: $(VENV)/.runtime-installed
	$(PY) benchmarks/bench_precompute.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_cli.py

clean:
	rm -rf demo_out quickstart_out .pytest_cache
