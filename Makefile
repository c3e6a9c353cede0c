# phantom-stress: one-command set-up. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
TORCH  := torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install demo test bench lint clean dicom-tools

install: $(STAMP)

# Re-installs only when pyproject.toml changes; torch is pinned first so pip never pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/stress validate scenarios/demo.yaml
	$(BIN)/stress run scenarios/demo.yaml --out $(DEMO_OUT) --device cpu
	$(BIN)/stress gate $(DEMO_OUT) --junit $(DEMO_OUT)/gate-junit.xml || test $$? -eq 1
	$(BIN)/stress report $(DEMO_OUT)

test: install dicom-tools
	$(BIN)/python -m pytest -q

# dciodvfy validates exported DICOM; best effort (the test that needs it is skipped, with a reason, without it).
dicom-tools:
	@command -v dciodvfy >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq dicom3tools) >/dev/null 2>&1; } || \
	  echo "dicom3tools not installed: the DICOM validation test will be skipped"

bench: install
	$(BIN)/python bench/bench_perturbations.py
	$(BIN)/python bench/bench_ct.py
	$(BIN)/python bench/bench_mri.py
	$(BIN)/python bench/bench_generic.py
	$(BIN)/python bench/bench_phantoms.py
	$(BIN)/python bench/bench_pipeline.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
