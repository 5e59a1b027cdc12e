# edgeport: entry points for a fresh clone (Python 3.11 + make).
#   make demo        install, train the digits example if needed, run the pipeline end to end
#   make test        install, run the test suite (what CI runs)
#   make test-fast   install, run the fast layer only: tests not marked slow (under a minute)
#   make lint        the import-layer contracts (lint-imports; pyproject.toml [tool.importlinter])
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test test-fast lint clean

# The OpenVINO EP ships as its own onnxruntime build: a managed environment (targets profile openvino-cpu).
install: $(VENV)/.installed
	$(VENV)/bin/edgeport targets setup openvino

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $@

demo: install
	$(PY) examples/digits/train.py --if-missing
	$(VENV)/bin/edgeport run examples/digits/pipeline.yaml

test: install
	$(PY) -m pytest

# Unit tests of pure functions and quick checks; every end-to-end test is marked slow.
test-fast: install
	$(PY) -m pytest -m "not slow"

# Layers: edgeport core <- tasks <- flows <- deployments <- edgeport.cli; no import cycles.
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports

clean:
	rm -rf .edgeport examples/*/artifacts
