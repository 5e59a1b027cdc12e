# edgeport: two entry points for a fresh clone (Python 3.11 + make).
#   make demo   install, train the digits example if needed, run the pipeline end to end
#   make test   install, run the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install demo test clean

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

clean:
	rm -rf .edgeport examples/*/artifacts
