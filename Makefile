# Targets that users and CI call. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
CNNLAB := $(VENV)/bin/cnnlab

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(CNNLAB) overfit --samples 4
	$(CNNLAB) train experiments/digits.yaml
	$(CNNLAB) eval latest

test: install
	$(PY) -m pytest -q -n auto --dist loadfile  # one worker per core; a file stays on one worker

lint: install
	$(VENV)/bin/ruff check cnnlab tests benchmarks
	$(VENV)/bin/ruff format --check cnnlab tests benchmarks

bench: install
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/bench_train.py --append benchmarks/RESULTS.md
	$(PY) benchmarks/bench_augment.py
	$(PY) benchmarks/bench_parallel.py

clean:
	rm -rf $(VENV) .pytest_cache
