# Two commands for a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (a plain `pip install torch` may fetch a multi-GB CUDA build).
TORCH ?= torch==2.13.0

.PHONY: demo test venv venv-dev bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Inference-only install: no torch.
venv: $(BIN)/python
	$(BIN)/pip install -q -e .

venv-dev: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[train,dev]"

demo: venv
	$(BIN)/captchalab ocr generate demo-captchas --count 20 --length 4-6 --seed 2026
	$(BIN)/captchalab ocr predict demo-captchas
	$(BIN)/captchalab ocr eval default demo-captchas --case-insensitive
	$(BIN)/captchalab grid solve examples/grids/grids/00001.png --prompt 狗脸
	$(BIN)/captchalab grid solve examples/grids/grids/00000.png --prompt "shooting star" --json
	$(BIN)/captchalab grid eval default examples/grids

test: venv-dev
	$(BIN)/python -m pytest -q

bench: venv-dev
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/ocr.py
	$(BIN)/python benchmarks/grid.py

lint: venv-dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-captchas .pytest_cache
