"""Progress while batches are out, read from the ledger: bars on a terminal, one line per poll elsewhere."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, RUN_DATE, make_config, simple_rows, write_routed
from routellm_batch.progress import LedgerProgress, interactive
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.stages import collect, submit


def test_progress_lines_follow_the_batches_to_collected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with SandboxServer(responder=SyntheticResponder(seed=1), tick_seconds=0.1, port=0) as srv:
        cfg = make_config(srv, tmp_path, max_requests=5)
        write_routed(cfg, simple_rows(cfg, 10, 5))
        with LedgerProgress(cfg, RUN_DATE, bars=False, refresh_s=0.05) as progress:
            submit.execute(cfg, RUN_DATE)
            assert collect.execute(cfg, RUN_DATE).done
    assert progress.lines[-1] == (
        "strong: 2 shard(s) / 10 row(s), 2 with a batch, 2 batches ended, 2 collected; "
        "weak: 1 shard(s) / 5 row(s), 1 with a batch, 1 batches ended, 1 collected"
    )
    assert len(progress.lines) >= 2  # it moved while the work went on, not only at the end


def test_bars_draw_rows_per_queue_and_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with SandboxServer(responder=SyntheticResponder(seed=2), tick_seconds=0.02, port=0) as srv:
        cfg = make_config(srv, tmp_path, max_requests=5)
        write_routed(cfg, simple_rows(cfg, 3, 4))
        with LedgerProgress(cfg, RUN_DATE, bars=True, refresh_s=0.05):
            submit.execute(cfg, RUN_DATE)
            assert collect.execute(cfg, RUN_DATE).done
    text = err.getvalue()
    assert "strong collected" in text and "3/3" in text and "weak collected" in text and "4/4" in text


def test_no_bars_in_airflow_or_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert not interactive()


def test_spark_bar_counts_the_tasks_of_the_job_it_watches(spark, monkeypatch: pytest.MonkeyPatch) -> None:
    from routellm_batch.progress import SparkProgress

    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with SparkProgress(spark, bars=True, refresh_s=0.02, desc="scoring"):
        # Slow enough per task that the tracker sees the stage while it runs.
        spark.sparkContext.parallelize(range(8), 8).map(lambda x: __import__("time").sleep(0.3) or x).count()
    assert "scoring" in err.getvalue() and "/8" in err.getvalue()
