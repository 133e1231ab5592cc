# make demo / make test work on a fresh machine with Python >= 3.11 and Java 17:
# each creates .venv when missing and installs the project into it first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Airflow lives in its own environment: the Spark provider's pyspark-client replaces pyspark.
AIRFLOW_VENV  ?= .venv-airflow
AIRFLOW_BIN   := $(AIRFLOW_VENV)/bin
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_VERSION ?= 3.3.2
# The CPU build of torch for the tests (an unpinned torch pulls a multi-GB CUDA build);
# a GPU cluster installs the `hf` extra with its own CUDA build instead.
TORCH_CPU ?= torch==2.13.0

.PHONY: help demo test install airflow clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)

# Reinstall when the project's dependencies change. The demo needs the core and Spark (the shipped
# router runs on wordllama + numpy, no torch).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[spark]"
	touch $@

# The tests need every extra (the Hugging Face routers too) and the test group.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q "$(TORCH_CPU)" -e ".[spark,hf]" --group test
	touch $@

$(AIRFLOW_BIN)/python:
	$(PYTHON) -m venv $(AIRFLOW_VENV)

$(AIRFLOW_STAMP): pyproject.toml | $(AIRFLOW_BIN)/python
	$(AIRFLOW_BIN)/python -m pip install -q --upgrade pip
	$(AIRFLOW_BIN)/python -m pip install -q "apache-airflow==$(AIRFLOW_VERSION)" -e ".[airflow]" --group test
	touch $@

install: $(STAMP)  ## create .venv and install the project (core + Spark)

airflow: $(AIRFLOW_STAMP)  ## create .venv-airflow: Airflow 3.3, the Spark provider, this project's light parts and the DAG's glue

demo: $(STAMP)  ## run the nightly job (`routellm-batch run`) on the embedded defaults (local Spark, sandbox provider, shipped router)
	$(BIN)/routellm-batch run --run-date $$(date +%F)

test: $(TEST_STAMP) $(AIRFLOW_STAMP)  ## run the test suite, then the DAG's tests in the Airflow environment
	$(BIN)/python -m pytest -q
	ROUTELLM_MAIN_VENV=$(abspath $(VENV)) $(AIRFLOW_BIN)/python -m pytest -q -p no:randomly airflow/tests

clean:  ## remove the virtual environment and local outputs
	rm -rf $(VENV) $(AIRFLOW_VENV) out spark-warehouse
