"""Optional dependency groups (pip extras), and the one-line error when one is missing.

The core install (config, providers, ledger, pricing, sandbox, report) is light; Spark, the
Hugging Face routers and Airflow come as extras, so an Airflow worker or a GPU cluster installs
only what it runs. Heavy imports sit inside `needs_extra(...)` blocks:

    with needs_extra("a Spark session"):
        from pyspark.sql import SparkSession

Light module: standard library only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXTRA_OF", "MissingExtra", "needs_extra"]

# Top-level module -> the extra that installs it (pyproject.toml [project.optional-dependencies]).
EXTRA_OF: dict[str, str] = {
    "pyspark": "spark",
    "py4j": "spark",
    "pandas": "spark",
    "great_expectations": "spark",
    "wordllama": "spark",
    "scipy": "spark",
    "matplotlib": "spark",
    "safetensors": "spark",
    "torch": "hf",
    "transformers": "hf",
    "tokenizers": "hf",
    "airflow": "airflow",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


@contextmanager
def needs_extra(needed_for: str) -> Iterator[None]:
    """Turn a missing optional module into one line naming the extra to install.

    A missing module that belongs to no extra is a real bug and is re-raised unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        extra = EXTRA_OF.get(top)
        if extra is None:
            raise
        raise MissingExtra(
            f"{needed_for} needs {top}, which is not installed: pip install 'routellm-batch[{extra}]'",
            name=exc.name,
        ) from None
