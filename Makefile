# Quick start: `make demo` and `make test` each set up .venv and do their job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE := demo-out/cifar10.zarr

.PHONY: setup demo test test-slow test-browser bench zoo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/probekit run --model cifar10-branched16 --data cifar10-sample \
		--plugins activity,covariance,specialization,intra-class --out $(DEMO_STORE) --overwrite --report

test: $(STAMP)
	$(BIN)/ruff check probekit plugins tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The browser test needs Debian's chromium (installed here with apt-get, as root) and playwright.
test-browser: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/pip install --quiet -e '.[test,browser]'
	$(BIN)/python -m pytest -q -m browser

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/report.py
	$(BIN)/python benchmarks/toy_sweep.py
	$(BIN)/python benchmarks/resnet_fused.py
	$(BIN)/python benchmarks/classifier_run.py
	$(BIN)/python benchmarks/hessian.py
	$(BIN)/python benchmarks/kernel_clustering.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/head_capture.py
	$(BIN)/python benchmarks/heads.py
	$(BIN)/python benchmarks/head_hessian.py

zoo: $(STAMP)
	for r in toy1 toy2 digits-branched8 digits-moe8; do $(BIN)/probekit train $$r --overwrite || exit 1; done

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache
