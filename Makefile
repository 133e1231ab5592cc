# make demo / make test work on a fresh machine with Python >= 3.11 and Java 17:
# each creates .venv when missing and installs the project into it first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help demo test install clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

install: $(STAMP)  ## create .venv and install the project

demo: $(STAMP)  ## run the nightly job (`routellm-batch run`) on the embedded defaults (local Spark, sandbox provider, shipped router)
	$(BIN)/routellm-batch run --run-date $$(date +%F)

test: $(STAMP)  ## run the test suite
	$(BIN)/python -m pytest -q

clean:  ## remove the virtual environment and local outputs
	rm -rf $(VENV) out spark-warehouse
