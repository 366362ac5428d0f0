# Two commands on a fresh machine:  make demo   and   make test
# Each creates .venv (pinned versions below) when it is missing or setup.cfg changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Exact versions for reproducible runs; setup.cfg keeps open ranges for users.
PINNED := torch==2.14.1 torchvision==0.29.1 numpy==2.4.6 zarr==3.1.6 h5py==3.16.0 \
          lvis==0.5.3 pycocotools==2.0.11 faster-coco-eval==1.8.0 tqdm==4.70.1 \
          matplotlib==3.11.2 pillow==13.0.0 pytest==9.2.0 pytest-xdist==3.8.0 ruff==0.17.6 import-linter==2.17
STAGES := data detector extract calibrate infer evaluate

.PHONY: venv demo test test-fast lint bench bench-scale bench-docs clean

venv: $(STAMP)

# --no-compile skips byte-compiling every file of every package (most are never imported); the import
# line then writes the bytecode of those that are, once (even where PYTHONDONTWRITEBYTECODE is set, as in
# CI, which would otherwise leave every later process compiling torch from source).
$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile $(PINNED)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps -e .
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -c "import torch.distributed.run, torchvision, zarr, h5py, lvis, \
	  faster_coco_eval, pycocotools.mask, matplotlib.pyplot, tqdm, PIL.Image, torch.utils.data, simcal.cli"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/simcal demo --out runs/demo

# Two workers, one per core (tests/conftest.py gives each one torch thread), sharing one copy of the session
# fixtures (the quick benchmark, detector and caches); files go to them whole, slowest first, in the order
# tests/conftest.py sets (--no-loadscope-reorder keeps it).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The inner loop: everything but the demo, torchrun and kill tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

# ruff (pyproject.toml), then the import layers (pyproject.toml [tool.importlinter]). import-linter
# finds subpackages on disk below the root package, while each stage folder installs as
# simcal.<folder> (setup.cfg package_dir): .lintview/ assembles that layout from copies to check it.
lint: $(STAMP)
	$(BIN)/ruff check .
	rm -rf .lintview && mkdir -p .lintview && cp -r simcal .lintview/simcal
	for d in $(STAGES); do cp -r $$d .lintview/simcal/$$d; done
	cd .lintview && ../$(BIN)/lint-imports --config ../pyproject.toml

# Benchmarks: each run is recorded in benchmarks/results/NAME.json (benchmarks/record.py), then
# docs/benchmarks.md and docs/scale.md are rendered from the records (benchmarks/render.py; never edit
# those pages). eval_speed, verify_speed, conversion_agreement, sweep_speed and the LVIS-scale smoke runs
# need nothing; calibrate_speed runs on a finished `make demo` (DEMO) when there is one.
DEMO := runs/demo
# bench-scale: the full LVIS-scale runs behind docs/scale.md (their wall time is in each record and on that page;
# about 30 GB of free disk under SCALE_WORK at a time, deleted as they go).
SCALE_WORK ?= runs/scale
SCALE_SIZES ?= 7,28

bench: $(STAMP)
	$(BIN)/python benchmarks/record.py eval_speed -- $(BIN)/python benchmarks/eval_speed.py --quick
	$(BIN)/python benchmarks/record.py verify_speed -- $(BIN)/python benchmarks/verify_speed.py --gb 4
	$(BIN)/python benchmarks/record.py conversion_agreement -- $(BIN)/python benchmarks/conversion_agreement.py
	$(BIN)/python benchmarks/record.py sweep_speed -- $(BIN)/python benchmarks/sweep_speed.py
	$(BIN)/python benchmarks/record.py lvis_scale_quick -- $(BIN)/python benchmarks/lvis_scale.py --quick \
	  --out $(SCALE_WORK)/quick
	$(BIN)/python benchmarks/record.py eval_speed_lvis_quick -- $(BIN)/python benchmarks/eval_speed.py --lvis-scale --quick
	if [ -d $(DEMO) ]; then \
	  $(BIN)/python benchmarks/record.py calibrate_speed -- $(BIN)/python benchmarks/calibrate_speed.py \
	    --checkpoint $(DEMO)/baseline_tiny.pth --data $(DEMO)/data --cache $(DEMO)/train.zarr --steps 600; \
	else \
	  echo "bench: no $(DEMO) (run 'make demo' first): calibrate_speed skipped"; \
	fi
	$(BIN)/python benchmarks/render.py

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/record.py lvis_scale_v1 -- $(BIN)/python benchmarks/lvis_scale.py --version v1 \
	  --sizes $(SCALE_SIZES) --out $(SCALE_WORK)/lvis_scale
	$(BIN)/python benchmarks/record.py lvis_scale_v0.5 -- $(BIN)/python benchmarks/lvis_scale.py --version v0.5 \
	  --sizes $(SCALE_SIZES) --out $(SCALE_WORK)/lvis_scale
	$(BIN)/python benchmarks/record.py eval_speed_lvis -- $(BIN)/python benchmarks/eval_speed.py --lvis-scale
	$(BIN)/python benchmarks/render.py

bench-docs: $(STAMP)
	$(BIN)/python benchmarks/render.py

clean:
	rm -rf runs .pytest_cache .lintview
