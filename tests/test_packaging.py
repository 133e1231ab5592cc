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
    "routellm_batch._extras",
    "routellm_batch.lease",
    "routellm_batch.carry",
    "routellm_batch.prompt_templates",
    "routellm_batch.text_view",
    "routellm_batch.structured",
    "routellm_batch.answer_cache",
    "routellm_batch.batches.served",
    "routellm_batch.providers.prompt_cache",
    # The stages the Airflow DAG's light tasks and its trigger run in the worker / triggerer.
    "routellm_batch.stages.submit",
    "routellm_batch.stages.wait",
    "routellm_batch.stages.collect",
    "routellm_batch.stages.report",
    # The audit slice needs no Spark either (its labelled pool is read by learn and written by audit).
    "routellm_batch.stages.audit",
    "routellm_batch.labels_pool",
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
    } | {"routellm_batch.schemas", "routellm_airflow"}
    assert found == declared


def test_cli_help_lists_every_stage():
    out = subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("validate", "score", "split", "submit", "wait", "collect", "nightly", "train", "evaluate"):
        assert command in out


def test_shipped_router_scores_without_torch_or_transformers():
    # Spark executors running the default router need the `spark` extra only, not `hf`.
    code = (
        "import sys\n"
        "from routellm_batch.routers.checkpoint import load_default_router\n"
        "scores = load_default_router().score(['What is 2 + 2?', 'Prove that there are infinitely many primes.'])\n"
        "assert len(scores) == 2\n"
        "print(','.join(m for m in ('torch', 'transformers', 'pyspark') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.splitlines()[-1:] in ([], [""]), f"the shipped router imported {out}"


def _without(module: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run code in an interpreter where `module` cannot be imported (an install without its extra)."""
    prelude = f"import sys; sys.modules[{module!r}] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=cwd)


def test_a_missing_extra_fails_with_one_line_naming_it(tmp_path):
    cli = _without("pyspark", "from routellm_batch.cli import main; sys.exit(main(['validate', '--run-date', '2026-01-01']))", tmp_path)
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines() == [
        "routellm-batch validate: this command needs pyspark, which is not installed: pip install 'routellm-batch[spark]'"
    ]

    hf = _without("torch", "from routellm_batch.routers.registry import resolve; resolve('bert')", tmp_path)
    assert hf.returncode == 1
    assert hf.stderr.strip().splitlines()[-1] == (
        "routellm_batch._extras.MissingExtra: router 'bert' needs torch, which is not installed: pip install 'routellm-batch[hf]'"
    )
