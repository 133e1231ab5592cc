"""Shared fixtures: one real local Spark session for the whole test session."""

from __future__ import annotations

import os
import sys

import pytest

# Spark's Python workers must run the same interpreter as the tests.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def spark():
    from routellm_batch.config import SparkSettings
    from routellm_batch.spark.session import get_spark

    session = get_spark(
        SparkSettings(master="local[2]", shuffle_partitions=2, conf={"spark.ui.enabled": "false"}),
        app_name="routellm-batch-tests",
    )
    yield session
    session.stop()
