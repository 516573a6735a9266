# One entry point for set-up: `make demo` runs the offline demo, `make test` the test suite.
# The venv is created once and reused; torch is installed before the package so pip never pulls a
# CUDA build by itself: a torch already importable by $(PYTHON) (e.g. a GPU user's) is kept via
# --system-site-packages, otherwise the CPU build $(TORCH_SPEC) is installed.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.okd-installed

.PHONY: install test test-fast demo demo-tiny bench clean

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "using the existing torch of $(PYTHON)"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# The test suite also runs the DeepSpeed ZeRO-3 tests: deepspeed is an optional extra (`scale`), built
# without its C++ ops (DS_BUILD_OPS=0; ~15 s), installed for testing only.
SCALE_STAMP := $(VENV)/.okd-scale-installed
$(SCALE_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[test,scale]"
	@touch $(SCALE_STAMP)

# The suite in TEST_WORKERS processes (pytest-xdist), one torch thread each (two threads per process on a
# 2-core machine spin-wait against each other); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(SCALE_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/okd demo

demo-tiny: $(STAMP)
	$(BIN)/okd demo --tiny

# TRL goes into the benchmark environment only (its GKDTrainer is the baseline of bench_step.py).
bench: $(STAMP)
	$(BIN)/pip install -q "trl>=1.16"
	$(BIN)/python benchmarks/bench_losses.py --threads 1
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_methods.py --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache
