# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.runtime-installed
	$(PY) examples/demo.py

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q

bench: $(VENV)/.runtime-installed
	$(PY) benchmarks/bench_precompute.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf demo_out .pytest_cache
