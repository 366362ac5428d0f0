# Two commands on a fresh machine:  make demo   and   make test
# Each creates .venv (pinned versions below) when it is missing or setup.cfg changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Exact versions for reproducible runs; setup.cfg keeps open ranges for users.
PINNED := torch==2.14.1 torchvision==0.29.1 numpy==2.4.6 zarr==3.1.6 h5py==3.16.0 \
          lvis==0.5.3 pycocotools==2.0.11 faster-coco-eval==1.8.0 tqdm==4.70.1 \
          matplotlib==3.11.2 pillow==13.0.0 pytest==9.2.0

.PHONY: venv demo test test-fast clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(PINNED)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/simcal demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# everything but the tests marked slow (the demo, torchrun, kill -9 / resume)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf runs .pytest_cache
