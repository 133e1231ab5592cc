"""Every mistake a user can make ends in one clear line on stderr (exit 2), not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, RUN_DATE, make_config, simple_rows, write_config_yaml, write_routed

REPO = Path(__file__).resolve().parents[1]


class _Nowhere:
    """Model endpoints on a port nothing listens on."""

    openai_base_url = "http://127.0.0.1:9/v1"
    anthropic_base_url = "http://127.0.0.1:9"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", *args], cwd=REPO, env=env or dict(os.environ),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _one_line(proc: subprocess.CompletedProcess[str], command: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    ours = [line for line in proc.stderr.splitlines() if line.startswith(f"routellm-batch {command}: ")]
    assert len(ours) == 1, proc.stderr[-2000:]
    return ours[0]


def _input_config(tmp_path: Path, uri: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "job_name": "errs", "input": {"uri": uri}, "output_root": str(tmp_path / "out"),
        "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
        "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
        "spark": {"master": "local[1]"},
    }))  # fmt: skip
    return path


def test_missing_input_path_names_the_path(tmp_path: Path) -> None:
    conf = _input_config(tmp_path, str(tmp_path / "no-such-table"))
    line = _one_line(_cli("validate", "--config", str(conf), "--run-date", "2026-01-01"), "validate")
    assert f"the input does not exist: file:{tmp_path / 'no-such-table'}" in line


def test_missing_java_says_how_to_fix_it(tmp_path: Path) -> None:
    conf = _input_config(tmp_path, str(tmp_path / "in"))
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-jdk")}  # Spark's launcher takes JAVA_HOME over PATH
    line = _one_line(_cli("validate", "--config", str(conf), "--run-date", "2026-01-01", env=env), "validate")
    assert f"JAVA_HOME={tmp_path / 'no-jdk'} has no bin/java" in line and "JDK 17" in line


def test_missing_key_variable_names_it(tmp_path: Path) -> None:
    cfg = make_config(_Nowhere(), tmp_path)
    write_routed(cfg, simple_rows(cfg, 1, 1))
    conf = write_config_yaml(_Nowhere(), tmp_path)
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    line = _one_line(_cli("submit", "--config", str(conf), "--run-date", RUN_DATE.isoformat(), env=env), "submit")
    assert f"environment variable {KEY_ENV} is not set" in line


@pytest.mark.slow  # the provider's own retries and backoff run out first (~45 s)
def test_unreachable_base_url_says_so(tmp_path: Path) -> None:
    cfg = make_config(_Nowhere(), tmp_path)
    write_routed(cfg, simple_rows(cfg, 1, 1))
    conf = write_config_yaml(_Nowhere(), tmp_path)
    proc = _cli("submit", "--config", str(conf), "--run-date", RUN_DATE.isoformat(), env={**os.environ, KEY_ENV: FAKE_KEY})
    line = _one_line(proc, "submit")
    assert "connection error" in line and "base_url" in line
    assert FAKE_KEY not in proc.stderr + proc.stdout


def test_empty_input_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    conf = _input_config(tmp_path, str(tmp_path / "empty.jsonl"))
    raw = yaml.safe_load(conf.read_text())
    raw["input"]["format"] = "json"
    conf.write_text(yaml.safe_dump(raw))
    line = _one_line(_cli("run", "--config", str(conf), "--run-date", "2026-01-01"), "run")
    assert "lacks required column(s) 'prompt_id'" in line and "it has: no columns" in line
