"""The package's shape: light modules stay light, every subpackage ships, the CLI lists every stage."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HEAVY = ("pyspark", "torch", "transformers", "great_expectations")

# Imported by Airflow workers and triggerers, which have no Spark or torch stack.
LIGHT_MODULES = [
    "routellm_batch.cli",
    "routellm_batch.config",
    "routellm_batch.schemas",
    "routellm_batch.routers.registry",
    "routellm_batch.ledger",
    "routellm_batch.run_report",
    "routellm_batch.providers.base",
    "routellm_batch.providers.openai",
    "routellm_batch.providers.anthropic",
    "routellm_batch.providers.pricing",
    "routellm_batch.sandbox.server",
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_module_imports_no_heavy_stack(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imported {out}"


def test_every_subpackage_is_declared_for_the_wheel():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "routellm_batch").rglob("__init__.py")
        if "__pycache__" not in p.parts
    } | {"routellm_batch.schemas"}
    assert found == declared


def test_cli_help_lists_every_stage():
    out = subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("validate", "score", "split", "submit", "wait", "collect", "nightly", "train", "evaluate"):
        assert command in out
