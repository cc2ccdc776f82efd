# Two targets do all set-up on a fresh machine (Python >= 3.11 as python3):
#   make quickstart   install hpsearch into .venv and run the quickstart study
#   make test         install hpsearch with its test and torch extras into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

quickstart: install
	$(BIN)/hpsearch run studies/quickstart.yaml

# torch is pinned to 2.13.0 (the CPU build) by the extra: no CUDA download on a CPU machine.
test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[torch,test]'
	$(BIN)/python -m pytest
