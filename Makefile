# Two commands for a new user:  make demo  (install + quickstart)  and  make test  (install + tests).
# The venv sees system site-packages, so a GPU build of torch you installed yourself is reused;
# only when no torch is importable do we pip-install the pinned version from PyPI (on Linux x86-64
# that wheel is the CUDA build; install the CPU wheel yourself first for a CPU-only machine).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
EXTRAS ?= dev,flow,metrics,diffusers

.PHONY: install demo test lint clean bench bench-quick

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/diffrep demo --out runs/demo

test: install
	$(PY) -m pytest

# Benchmarks (not tests): ratios measured side by side, JSON + bench/bench.html + bench/summary.md.
# bench-quick: about 8 minutes on 2 CPU cores (under 10); bench: the full run, about 30 there.
bench: install
	$(PY) benchmarks/bench.py --out bench

bench-quick: install
	$(PY) benchmarks/bench.py --quick --out bench

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs bench .pytest_cache
