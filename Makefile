# Set-up and the two everyday jobs. `make run` trains the main job; `make test` runs the test suite.
# Both create .venv on first use: the CPU build of PyTorch (override with TORCH=...), then this package with
# the extras the tests exercise (the trackers' two add about 28 s to a 62 s install: tests/test_tracking.py).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup run test test-slow coverage lint bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,export,mlflow,wandb,slurm,docs]"
	touch $@

run: setup
	$(BIN)/resnetlab train

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# the lines of src/ the default test run never executes (child processes included; CUDA and slow tests are not
# in it): where code that cannot run would show (docs/architecture.md, "Size"); about 11 minutes on 2 cores
coverage: setup
	rm -rf .coverage-data
	$(BIN)/coverage run -m pytest -q -p no:cacheprovider
	$(BIN)/coverage combine -q
	$(BIN)/coverage report -m --skip-covered --sort=miss

lint: setup
	$(BIN)/ruff check src tests benchmarks tools

# speed and memory against the plain eager baseline (docs/benchmarks.md); CUDA when present, else CPU
bench: setup
	$(BIN)/python -m benchmarks.run --out results/bench/$(shell $(BIN)/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')").json

# the API reference from the docstrings and the docs/ pages (mkdocs.yml), into ./site (open site/index.html);
# strict: a warning (a broken link, a docstring griffe cannot parse, a name gone from the API) fails it
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .coverage-data
