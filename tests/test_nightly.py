"""The run end to end on the embedded demo: every input row ends in exactly one place; a second run does nothing."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from routellm_batch.config import load_config
from routellm_batch.stages import run as run_stage

RUN_DATE = date(2026, 11, 22)


def table(root, name, run_date=RUN_DATE):
    return ds.dataset(f"{root}/{name}/run_date={run_date.isoformat()}", format="parquet", partitioning="hive").to_table()


def sandbox_account(config):
    """What the (persistent) sandbox provider created and billed, read back from its state."""
    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer.from_settings(config.sandbox) as server:
        return sorted(b.id for b in server.batches()), server.billed()


def tables_on_disk(root: str) -> dict[str, tuple[int, int]]:
    """Every table file (not the ledger's bookkeeping or the sandbox's state): path -> (size, mtime)."""
    out = {}
    for path in Path(root).rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(("ledger/", "_sandbox/")):
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def demo_config(tmp_path):
    config = load_config()  # the embedded defaults `make demo` runs
    fast_sandbox = config.sandbox.model_copy(update={"tick_seconds": 0.05, "state_dir": str(tmp_path / "sandbox")})
    return config.model_copy(
        update={
            "output_root": str(tmp_path / "out"),
            "sandbox": fast_sandbox,
            "batch": config.batch.model_copy(update={"poll_interval_seconds": 0.05}),
        }
    )


def test_demo_run_accounts_for_every_row_and_a_second_run_does_no_work(demo_config, spark, monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)

    result = run_stage.execute(demo_config, RUN_DATE)
    stages = [s.name for s in run_stage.STAGES if s.applies(demo_config)]  # no cascade in the demo: no escalate
    assert result.complete and result.ran == stages and result.skipped == []

    root = demo_config.output_root
    quarantine = table(root, "quarantine").to_pylist()
    routed = table(root, "routed").to_pylist()
    responses = table(root, "responses").to_pylist()
    report = {r["model"]: r for r in table(root, "cost_report").to_pylist()}
    # 204 rows in: 4 deliberately bad ones quarantined, the 200 others routed and answered once each.
    assert sorted(r["reason"] for r in quarantine) == ["duplicate_prompt_id", "empty_prompt", "missing_prompt_id", "wrong_type"]
    assert len(routed) == 200 and len({r["prompt_id"] for r in routed}) == 200
    assert sorted(r["prompt_id"] for r in responses) == sorted(r["prompt_id"] for r in routed)
    assert {r["status"] for r in responses} == {"succeeded"}
    strong = sum(r["queue"] == "strong" for r in routed)
    assert strong == 60  # strong_fraction 0.3 of 200, exactly
    # Replayed answers are the recorded ones, and the report prices the reported usage.
    assert all(r["response_text"] for r in responses)
    # The demo holds one question twice (gsm8k-0000 and gsm8k-0001): sent once, the second row served by dedupe.
    assert report["all"]["requests"] == 199 and report["all"]["dedupe_requests"] == 1
    assert report["all"]["cost_usd"] == report["gpt-4.1"]["cost_usd"] + report["claude-haiku-4-5"]["cost_usd"]
    assert report["all"]["cost_usd"] < report["all"]["baseline_online_usd"]
    assert "cost report demo/2026-11-22" in result.texts[-1]
    assert not [v for v in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY") if v in os.environ]  # sandbox keys cleaned up

    batches, billed = sandbox_account(demo_config)
    assert len(batches) == 2 and set(billed.values()) == {1} and len(billed) == 199  # one batch per queue
    before = tables_on_disk(root)

    again = run_stage.execute(demo_config, RUN_DATE)  # the same night again: every stage complete and unchanged

    assert again.complete and again.ran == [] and again.skipped == stages
    assert tables_on_disk(root) == before  # not one table file written
    assert sandbox_account(demo_config) == (batches, billed)
    assert "cost report demo/2026-11-22" in again.texts[-1]
    summary = run_stage.summary_table(demo_config, RUN_DATE)
    assert "rows in                                   204" in summary and "routed strong / weak                      60 / 140" in summary
    assert "succeeded / errored / expired / canceled  200 / 0 / 0 / 0" in summary and "cost vs all-strong online (USD)" in summary
    # The demo replays answers whose correctness is known: quality sits beside cost, and the report is named.
    assert "73.5% vs 84.0% correct" in summary and "all-weak 62.5%" in summary
    assert f"/report/run_date={RUN_DATE.isoformat()}/index.html" in summary
    assert "has never been measured on this job's prompts" in summary  # the shipped router has no learn report here

    # --from-stage report: only the report is made again, from the same responses, to the same amounts.
    redo = run_stage.execute(demo_config, RUN_DATE, from_stage="report")
    assert redo.ran == ["report"] and redo.skipped == stages[:-1]
    assert {r["model"]: r["cost_usd"] for r in table(root, "cost_report").to_pylist()} == {m: r["cost_usd"] for m, r in report.items()}
    assert sandbox_account(demo_config) == (batches, billed)
