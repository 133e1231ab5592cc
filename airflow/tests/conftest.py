"""The Airflow environment's tests: a throwaway AIRFLOW_HOME, the repo's DAG folder, keys in connections.

Run in the Airflow virtual environment (`make test` does), never in the project's main one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "airflow" / "dags"

# Before anything imports airflow: its settings are read once, at import.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="routellm-airflow-home-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

# The submit/collect test helpers (routed tables, sandbox configs, invariants) are shared with the main suite.
sys.path.insert(0, str(ROOT / "tests"))

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV  # noqa: E402


def connection_env(conn_id: str, password: str) -> tuple[str, str]:
    """An Airflow connection defined the way a deployment's secrets backend would hand it over."""
    import json

    return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "generic", "password": password})


@pytest.fixture
def provider_connections(monkeypatch):
    """Keys only in Airflow connections: the environment variable the config names stays unset."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    for conn_id in ("routellm_openai", "routellm_anthropic"):
        monkeypatch.setenv(*connection_env(conn_id, FAKE_KEY))
