"""SIGKILL `routellm-batch submit / collect` exactly where a crash hurts, then run again.

The CLI runs in a subprocess against a sandbox served by this test process, so the provider's
state survives the kill. Each kill is aimed with a named crash point (routellm_batch/crashpoints.py,
`ROUTELLM_BATCH_CRASH_AT`): after the provider accepted a create but before the ledger holds the
batch id; during the atomic write of that ledger record; between the upload of a shard's input and
its create; in the middle of a results download. Each test first proves the kill landed there (the
process died by SIGKILL, printed no summary line, and left the state that point leaves), then re-runs
the stages and compares the run with the sandbox's billing record: every billed request billed once,
each billed exactly for a succeeded row with the same token counts, no shard with two batches, and
the API key in no file and no output line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch_sandbox_helpers import (
    FAKE_KEY,
    KEY_ENV,
    RUN_DATE,
    check_invariants,
    files_containing,
    make_config,
    read_responses,
    simple_rows,
    write_config_yaml,
    write_routed,
)
from routellm_batch.crashpoints import ENV as CRASH_ENV
from routellm_batch.ledger import Ledger, ShardState
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parents[1]


def _cli(stage: str, conf: Path, log: Path, crash_at: str | None = None) -> tuple[int, str]:
    """Run one stage's CLI to its end (or its crash point). Returns (exit code, output)."""
    args = [stage, "--config", str(conf), "--run-date", RUN_DATE.isoformat()] + (["--timeout", "120"] if stage == "collect" else [])
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env.update({KEY_ENV: FAKE_KEY, "PYTHONUNBUFFERED": "1"} | ({CRASH_ENV: crash_at} if crash_at else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", "--verbose", *args],
        cwd=REPO, env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    with log.open("a") as f:
        f.write(f"### {stage} (crash at {crash_at}) -> exit {proc.returncode}\n{out}")
    return proc.returncode, out


def _assert_killed(rc: int, out: str, stage: str, run_id: str) -> None:
    assert rc == -9, f"expected a SIGKILL, got exit {rc}:\n{out[-3000:]}"
    assert f"{stage} {run_id}:" not in out, "the stage printed its summary: the kill came after it finished"


def _assert_billed_once_for_what_was_answered(cfg: Any, srv: SandboxServer) -> None:
    """The sandbox's billing record, request by request, against the responses table."""
    billing = srv.billing()
    billed = [(b.provider, b.custom_id) for b in billing]
    assert len(billed) == len(set(billed)), "a request was billed twice"
    succeeded = {
        (r["provider"], r["custom_id"]): (r["input_tokens"], r["output_tokens"])
        for r in read_responses(cfg).to_pylist()
        if r["status"] == "succeeded"
    }
    assert succeeded == {(b.provider, b.custom_id): (b.input_tokens, b.output_tokens) for b in billing}


# (stage killed, crash point, what the kill must have left behind)
KILLS = {
    "between upload and create": ("submit", "upload.returned", "uploaded"),
    "create accepted, batch id not recorded": ("submit", "create.answered", "created"),
    "during the atomic write of the batch id": ("submit", "ledger.write:strong-a1-00000-*.json#4", "created"),
    "in the middle of a results download": ("collect", "results.download", "downloading"),
}


@pytest.mark.parametrize("where", list(KILLS))
def test_a_run_killed_where_it_hurts_reruns_to_one_outcome_per_row_billed_once(tmp_path: Path, where: str) -> None:
    stage, crash_at, leaves = KILLS[where]
    log = tmp_path / "cli.log"
    with SandboxServer(responder=SyntheticResponder(seed=0), tick_seconds=0.05, port=0) as srv:
        cfg = make_config(srv, tmp_path / "out", max_requests=5)
        rows = simple_rows(cfg, 8, 6)
        write_routed(cfg, rows)
        conf = write_config_yaml(srv, tmp_path / "out", max_requests=5)
        run_id = cfg.run_id(RUN_DATE)
        if stage == "collect":
            assert _cli("submit", conf, log)[0] == 0

        rc, out = _cli(stage, conf, log, crash_at)
        _assert_killed(rc, out, stage, run_id)
        records = Ledger.for_run(cfg, RUN_DATE).records()
        batches = srv.batches()
        if leaves == "uploaded":  # the input file is at the provider; no batch, no file id in the ledger
            assert batches == [] and srv.stats()["files"] == 1
            assert all(r.provider_input_file_id is None for r in records)
        elif leaves == "created":  # one batch exists; the ledger still has only the intent
            (batch,) = batches
            (rec,) = [r for r in records if r.state is ShardState.SUBMITTING]
            assert rec.batch_id is None and batch.metadata and batch.metadata["shard_id"] == rec.shard_id
            if crash_at.startswith("ledger.write"):  # the record's new version was written, never renamed in
                leftovers = [p.name for p in (tmp_path / "out").rglob(f".{rec.shard_id}.json.tmp-*")]
                assert len(leftovers) == 1
        else:  # collect died with a download begun and a shard not collected
            calls = srv.stats()["calls"]
            assert calls.get("openai.files.content", 0) + calls.get("anthropic.batches.results", 0) >= 1
            assert any(r.state is not ShardState.COLLECTED for r in records)

        assert _cli("submit", conf, log)[0] == 0
        rc, out = _cli("collect", conf, log)
        assert rc == 0 and f"collect {run_id}:" in out, out[-3000:]

        check_invariants(cfg, srv, [r["prompt_id"] for r in rows])
        records = Ledger.for_run(cfg, RUN_DATE).records()
        assert {r.state for r in records} == {ShardState.COLLECTED}
        assert len(srv.batches()) == len(records)  # the batch made before the kill was found, not made again
        _assert_billed_once_for_what_was_answered(cfg, srv)
    assert files_containing(tmp_path, FAKE_KEY) == []
    text = log.read_text()
    assert FAKE_KEY not in text and "Traceback" not in text
