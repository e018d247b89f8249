# Everything a fresh machine needs: `make demo` and `make test` create the venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_OUT := build/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(DEMO_OUT)
	$(VENV)/bin/onnxbc compress models/fashion_cnn.onnx --data models/data/fashion_calib.npz \
		-o $(DEMO_OUT)/fashion_cnn.int8.onnx --force
	$(PY) -m models.fashion_demo models/fashion_cnn.onnx $(DEMO_OUT)/fashion_cnn.int8.onnx

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check onnxbc passes tests models benchmarks
	$(VENV)/bin/ruff format --check onnxbc passes tests models benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
