# Two commands do all the set-up: `make bench` and `make test` (both install first, once);
# `make lint` runs the linter CI runs; `make extras` adds the optional packages (fine-tuning's
# timm, FID's torch-fidelity, the bench plot's matplotlib) without replacing the installed torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Re-install only when what the build reads changes.
STAMP := $(VENV)/.mage-fast-installed
BUILD_INPUTS := setup.py pyproject.toml $(wildcard csrc/*)

.PHONY: install test lint bench extras clean

install: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	# torch first, and never replace one that is there (a CUDA build must stay).
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet ninja pybind11 numpy
	$(PIP) install --quiet --no-build-isolation -e ".[test]"
	touch $(STAMP)

test: install
	$(PY) -m pytest tests --durations=20

# The linter CI runs, pinned so that a new release's rules never turn CI red on their own.
lint: install
	$(PY) -c "import ruff" 2>/dev/null || $(PIP) install --quiet ruff==0.17.6
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/mage-fast bench

# torch stays the installed build and torchvision is the release made for it (from PyTorch's
# index for its CPU and CUDA builds); EXTRAS picks which (e.g. EXTRAS=plot), TORCH_INDEX another
# index to look in.
EXTRAS ?= finetune fid plot
TORCH_INDEX ?=
extras: install
	$(PY) -m mage_fast.extras $(EXTRAS) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

clean:
	rm -rf $(VENV) build *.egg-info mage_fast/_C*.so
