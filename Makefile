# `make test` and `make demo` set everything up on a fresh machine: a virtual environment
# in .venv, installed once through constraints.txt (torch and torchvision pinned together).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: test test-fast demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite without the end-to-end tests marked slow (pytest.mark.slow), for quick checks.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/vismae demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) runs
