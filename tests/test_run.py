"""`routellm-batch run` as a scheduler uses it: killed anywhere, run again, the same tables, nothing paid twice.

The CLI runs the embedded demo in a subprocess (its own Spark, its own sandbox provider whose
books persist in a state folder, as a provider's do) and is SIGKILLed at chosen points; the
same command then finishes the run. The final tables are compared with an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from routellm_batch.config import DEFAULT_CONFIG, load_config
from routellm_batch.stages import run as run_stage

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = date(2026, 11, 23)


def _demo_yaml(root: Path, **threshold: object) -> Path:
    raw = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
    raw["output_root"] = str(root / "out")
    raw["sandbox"] |= {"state_dir": str(root / "sandbox"), "tick_seconds": 0.2}
    raw["batch"] |= {"poll_interval_seconds": 0.1}
    if threshold:
        raw["threshold"] = threshold
    root.mkdir(parents=True, exist_ok=True)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _final_tables(root: Path) -> dict[str, list[tuple]]:
    def rows(name: str, columns: list[str]) -> list[tuple]:
        table = ds.dataset(root / "out" / name / f"run_date={RUN_DATE.isoformat()}", format="parquet", partitioning="hive")
        return sorted((tuple(r[c] for c in columns) for r in table.to_table(columns=columns).to_pylist()), key=repr)

    return {
        "routed": rows("routed", ["prompt_id", "queue", "model", "strong_win_prob"]),
        "quarantine": rows("quarantine", ["prompt_id", "reason"]),
        "responses": rows("responses", ["prompt_id", "queue", "model", "custom_id", "status", "response_text", "input_tokens", "output_tokens"]),
        "cost_report": rows("cost_report", ["model", "requests", "cost_usd", "baseline_online_usd"]),
    }


def _billed(conf: Path) -> dict:
    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer.from_settings(load_config(conf).sandbox) as server:
        return server.billed()


def _run_cli(conf: Path, log: Path, kill_on: str | None, rng: random.Random) -> int:
    """`routellm-batch --verbose run`; SIGKILL it right after the first output line containing `kill_on`."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")} | {"PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "routellm_batch.cli", "--verbose", "run", "--config", str(conf), "--run-date", RUN_DATE.isoformat()]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    with log.open("a") as out:
        out.write(f"### run (kill on {kill_on!r})\n")
        for line in proc.stdout:
            out.write(line)
            if kill_on is not None and kill_on in line:
                time.sleep(rng.uniform(0, 0.05))
                proc.kill()
                break
        out.write(proc.stdout.read())
        rc = proc.wait(timeout=600)
        out.write(f"### exit {rc}\n")
    return rc


@pytest.mark.slow
def test_run_killed_at_several_points_then_run_again_gives_the_same_tables_and_pays_once(tmp_path: Path, spark) -> None:
    rng = random.Random(7)
    # The reference: one uninterrupted run, in this process.
    ref_conf = _demo_yaml(tmp_path / "ref")
    assert run_stage.execute(load_config(ref_conf), RUN_DATE).complete
    reference = _final_tables(tmp_path / "ref")

    conf = _demo_yaml(tmp_path / "killed")
    log = tmp_path / "cli.log"
    kills = 0
    # The report stage is pure pyarrow and idempotent: killing it proves nothing the others do not.
    for point in ("stage split: running", "created batch", "stage collect: running"):
        rc = _run_cli(conf, log, point, rng)
        assert rc in (-9, 0), log.read_text()[-3000:]
        kills += rc == -9
    assert kills >= 2, log.read_text()[-3000:]
    assert _run_cli(conf, log, None, rng) == 0, log.read_text()[-3000:]

    assert _final_tables(tmp_path / "killed") == reference
    billed = _billed(conf)
    # 200 routed rows, 199 distinct requests: the demo's repeated question is sent once (dedupe).
    assert len(billed) == 199 and set(billed.values()) == {1}, "a request billed twice, or one not billed"
    assert "Traceback" not in log.read_text()


def test_changed_threshold_reruns_split_onwards_and_pays_only_for_rerouted_rows(tmp_path: Path, spark) -> None:
    config = load_config(_demo_yaml(tmp_path, policy="strong_fraction", fraction=0.3))
    first = run_stage.execute(config, RUN_DATE)
    assert first.complete
    before = _final_tables(tmp_path)
    billed_before = _billed(tmp_path / "run.yaml")

    more_strong = load_config(_demo_yaml(tmp_path, policy="strong_fraction", fraction=0.4))
    second = run_stage.execute(more_strong, RUN_DATE)

    assert second.complete and second.skipped == ["validate"] and second.ran == [s.name for s in run_stage.STAGES[1:] if s.applies(more_strong)]  # no cascade, no audit here
    after = _final_tables(tmp_path)
    strong_before = {r[0] for r in before["routed"] if r[1] == "strong"}
    strong_after = {r[0] for r in after["routed"] if r[1] == "strong"}
    assert len(strong_before) == 60 and len(strong_after) == 80 and strong_before < strong_after
    # One outcome per routed prompt, each from its current queue's model.
    assert sorted((r[0], r[1]) for r in after["responses"]) == sorted((r[0], r[1]) for r in after["routed"])
    billed = _billed(tmp_path / "run.yaml")
    assert set(billed.values()) == {1}
    # Only the 20 rows moved to the strong queue were sent again; two of them are the demo's repeated
    # question, one request.
    assert len(billed) == len(billed_before) + 19
