# The two Quickstart commands: `make demo` (main job: optkit tune --example digits) and `make test`;
# both install what they need.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A CPU wheel of torch is pinned here so a fresh machine does not pull CUDA packages; the package
# itself only asks for torch>=2.3, so users elsewhere keep their own build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test lint bench

install:
	$(PIP) install --quiet $(TORCH_PIN)
	$(PIP) install --quiet -e ".[test]"

demo: install
	optkit tune --example digits

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check lightning_optkit tests examples benchmarks
	lint-imports
	python -m pytest -q -p no:cacheprovider -o addopts= tests/test_architecture.py

bench: install
	$(PYTHON) benchmarks/bench_schedules.py
	$(PYTHON) benchmarks/grad_norm_overhead.py
	$(PYTHON) benchmarks/doctor_suite.py
	$(PYTHON) benchmarks/autoclip_lr_range.py
	$(PYTHON) benchmarks/lr_finder_quality.py
	$(PYTHON) benchmarks/checkpoint_stall.py
	$(PYTHON) benchmarks/tune_demo_time.py
	$(PYTHON) benchmarks/tuning_efficiency.py
