# Targets that users and CI call. `make demo` and `make test` work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
CNNLAB := $(VENV)/bin/cnnlab

.PHONY: install demo test lint bench gpu-wheels clean

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
	$(PY) benchmarks/bench_compile.py --append benchmarks/RESULTS.md
	$(PY) benchmarks/bench_convs.py --append benchmarks/RESULTS.md
	$(PY) benchmarks/bench_augment.py
	$(PY) benchmarks/bench_parallel.py

# Wheels of what a GPU machine without network may lack (its Python is 3.12), for benchmarks/gpu.sh
GPU_WHEELS = pydantic pydantic-core annotated-types typing-inspection tensorboardX
gpu-wheels: install
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(PY) -c "from importlib.metadata import version; print(*(f'{n}=={version(n)}' for n in '$(GPU_WHEELS)'.split()))")

clean:
	rm -rf $(VENV) .pytest_cache
