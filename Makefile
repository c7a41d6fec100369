# Two commands on a fresh machine:  `make demo`  (main job on the embedded default model)
#                                   `make test`  (the test suite)
PYTHON ?= python3
VENV   ?= .venv
LEAN   ?= .venv-lean
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LEAN_STAMP := $(LEAN)/.installed
# The suite runs in this many pytest-xdist workers, a test file per worker at a time; each worker
# gets its share of the cores (tests/conftest.py). TEST_WORKERS=1 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: demo test install lean clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The lean deployment install (base + ONNX Runtime, no torch): the tests run predict from it.
$(LEAN_STAMP): pyproject.toml $(shell find lga_export cli trt_engines -name '*.py')
	rm -rf $(LEAN)
	$(PYTHON) -m venv $(LEAN)
	$(LEAN)/bin/pip install --quiet --upgrade pip
	$(LEAN)/bin/pip install --quiet ".[cpu]"
	touch $(LEAN_STAMP)

install: $(STAMP)

lean: $(LEAN_STAMP)

demo: $(STAMP)
	$(BIN)/lga-export demo --out runs/demo --force

test: $(STAMP) $(LEAN_STAMP)
	LGA_LEAN_VENV=$(LEAN) $(BIN)/python -m pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) $(LEAN) runs
