"""SIGKILL at random points of `routellm-batch submit / wait / collect`, then run again.

The CLI runs in a subprocess against a sandbox served by this test process, so the provider's
state survives the kills. A kill point is "after the k-th log line" (each HTTP call and each
ledger step logs one) plus a few milliseconds of jitter, k drawn from the seed: points spread
over the whole run whatever the machine's speed. Afterwards: every routed row has exactly one
final outcome, the sandbox billed every request at most once, no shard has two batches, and the
API key is in no output file and no log line.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_sandbox_helpers import (
    FAKE_KEY,
    KEY_ENV,
    RUN_DATE,
    check_invariants,
    files_containing,
    make_config,
    simple_rows,
    write_config_yaml,
    write_routed,
)
from routellm_batch.ledger import Ledger
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parents[1]


def _cli(args: list[str], log: Path, kill_after: int | None, rng: random.Random) -> tuple[int, int]:
    """Run the CLI; SIGKILL it after `kill_after` output lines. Returns (exit code, lines seen)."""
    t0 = time.monotonic()
    env = {**os.environ, KEY_ENV: FAKE_KEY, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "routellm_batch.cli", "--verbose", *args],  # every HTTP call logs a line
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines = 0
    with log.open("ab") as out:
        out.write(f"### {' '.join(args)} (kill after {kill_after} lines)\n".encode())
        for line in proc.stdout:
            out.write(line)
            lines += 1
            if kill_after is not None and lines >= kill_after:
                time.sleep(rng.uniform(0, 0.02))
                proc.kill()  # SIGKILL: no cleanup, no finally blocks
                break
        out.write(proc.stdout.read())
    rc = proc.wait(timeout=180)
    with log.open("ab") as out:
        out.write(f"### exit {rc} after {time.monotonic() - t0:.1f}s\n".encode())
    return rc, lines


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_killed_stages_rerun_to_one_outcome_per_row_without_paying_twice(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    rng = random.Random(seed)
    faults = Faults(
        seed=seed,
        request_error_share=0.15,
        request_error_kinds=("server_error", "expired", "invalid_request"),
        lose_create_share=0.1,
        rate_limit_share=0.05,
    )
    log = tmp_path / "cli.log"
    with SandboxServer(responder=SyntheticResponder(seed=seed), faults=faults, tick_seconds=0.05, port=0) as srv:
        cfg = make_config(srv, tmp_path / "out", max_requests=6)
        rows = simple_rows(cfg, 30, 24)
        write_routed(cfg, rows)
        conf = write_config_yaml(srv, tmp_path / "out", max_requests=6)
        common = ["--config", str(conf), "--run-date", RUN_DATE.isoformat()]
        kills = 0
        # `wait` is skipped: collect polls too, and a killed poll loop has nothing to lose.
        for stage, tries, max_lines in (("submit", 1, 30), ("collect", 2, 45)):
            for _ in range(tries):
                rc, _ = _cli([stage, *common], log, rng.randint(1, max_lines), rng)
                kills += rc == -9
            rc, _ = _cli([stage, *(common + (["--timeout", "120"] if stage == "collect" else []))], log, None, rng)
            assert rc == 0, log.read_text()[-3000:]
        assert kills >= 1, "at least one kill must land inside a run"
        m = check_invariants(cfg, srv, [r["prompt_id"] for r in rows])
        states = {r.state.value for r in Ledger.for_run(cfg, RUN_DATE).records()}
        assert states == {"collected"}
        print(
            f"FAULT-MATRIX | SIGKILL x{kills} in submit/collect (seed {seed}) + request errors, lost creates, 429s "
            f"| rows_in={m['rows_in']} | outcomes={m['outcomes']} | errors={m['error_types']} | duplicates_billed={m['duplicates_billed']} | batches={m['batches']}"
        )
    assert files_containing(tmp_path, FAKE_KEY) == []
    assert "Traceback" not in log.read_text()
