"""Optional dependency groups (pip extras), and the one-line error when one is missing.

The core install (config, providers, ledger, pricing, sandbox, report) is light; Spark, the
Hugging Face routers and Airflow come as extras, so an Airflow worker or a GPU cluster installs
only what it runs. Heavy imports sit inside `needs_extra(...)` blocks:

    with needs_extra("a Spark session"):
        from pyspark.sql import SparkSession

Light module: standard library only.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["EXTRA_OF", "MissingExtra", "import_registered", "needs_extra"]

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


def import_registered(registry: Mapping[str, str], kind: str, *, unknown: str, needed_for: str) -> Any:
    """The object a registry names as "module:attr" for `kind`, imported only now.

    `unknown` labels a kind the registry lacks ("unknown {unknown} 'x'; allowed: ..."); `needed_for`
    names what a missing extra was needed for."""
    try:
        target = registry[kind]
    except KeyError:
        raise ValueError(f"unknown {unknown} {kind!r}; allowed: {', '.join(sorted(registry))}") from None
    module, _, attr = target.partition(":")
    with needs_extra(needed_for):
        return getattr(importlib.import_module(module), attr)
