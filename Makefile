# Two entry points, each does its own set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: demo test test-fast lint venv clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first, so that nothing pulls a CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	# InsightFace's own code, which the tests run beside ours; --no-deps because it asks for opencv-python,
	# which would shadow our opencv-python-headless (its other needs are in [dev]).
	$(BIN)/pip install -q --no-deps "insightface==2.1"
	# The watermark's RivaGAN models ship in invisible-watermark's wheel; --no-deps for the same reason (it
	# asks for opencv-python); we run its ONNX files through onnxruntime ourselves.
	$(BIN)/pip install -q --no-deps "invisible-watermark==0.2.0"
	$(BIN)/python -m dynamicid.prep.sparkenv --check
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/dynamicid make-sample $(DEMO)/input
	$(BIN)/dynamicid prep $(DEMO)/input $(DEMO)/output

# The eval report test renders in headless Chromium, and the provenance test reads images with exiftool;
# install them from Debian's packages when we can.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: Chromium is not installed; the report-rendering test will be skipped"
	@command -v exiftool >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >/dev/null; }; } || \
	  echo "note: exiftool is not installed; the provenance test that reads with it will be skipped"

# ruff (lint and format check) over everything; mypy, strict, on the model and generation packages.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

# Two workers (pytest-xdist): the tests on the Spark session share one worker, so Spark starts once
# (tests/conftest.py groups them); the rest run beside them, file by file.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadgroup

test: $(STAMP) browser lint
	$(BIN)/python -m pytest -q -ra --durations=15 $(PYTEST_WORKERS)

# The quick tier for local iterations: everything but the tests marked slow (extra Spark applications,
# subprocesses, the browser). `make test`, which CI runs, runs both tiers.
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -q -ra -m "not slow" $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) build
