# Two commands: `make demo` (set up, then build every applicable dtype of PP-OCRv4 shipped by rapidocr-onnxruntime)
# and `make test` (set up, then the whole suite). Everything lives in .venv; nothing is downloaded from a model hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-minilm test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build this machine carries; an unpinned torch would pull a CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	# Ray is optional (onnxdtype zoo --executor ray): without it the Ray tests are skipped, the suite still runs.
	$(BIN)/pip install --quiet -e ".[test,ray]" || echo "Ray could not be installed; the Ray tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

# Every dtype of PP-OCRv4 det/cls/rec, calibrated on real images and text lines and verified on others. Variants that miss
# their tolerance even after repair are reported failed (exit 1): the demo shows them rather than stopping.
demo: $(STAMP)
	$(BIN)/python examples/ocr_models.py demo-out/ocr
	$(BIN)/onnxdtype inspect demo-out/ocr/rec.onnx
	-$(BIN)/onnxdtype quantize demo-out/ocr --dtype all --calib demo-out/ocr-calib --eval demo-out/ocr-eval \
		--out demo-out/ocr-variants --latency-runs 10
	@echo "report: demo-out/ocr-variants/report.html   manifest: demo-out/ocr-variants/onnxdtype.json"

demo-minilm: $(STAMP)
	$(BIN)/python -c "import sys; sys.path.insert(0, 'tests'); import realmodels, pathlib; realmodels.export_minilm(pathlib.Path('demo-out/minilm/model.onnx'))"
	$(BIN)/onnxdtype quantize demo-out/minilm/model.onnx --dtype all --out demo-out/minilm-variants

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/build.py

clean:
	rm -rf $(VENV) demo-out .cache .pytest_cache
