"""RunBatchesTrigger against the sandbox, through the SDKs' async clients: fires when the batches end,
rides out 500s, 429s and a sandbox restart, times out as documented, and survives its own serialization."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import date
from pathlib import Path

import pytest
from batch_sandbox_helpers import FAKE_KEY, RUN_DATE, files_containing, make_config, simple_rows, write_config_yaml, write_routed

from routellm_batch.ledger import Ledger
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_airflow import tasks
from routellm_airflow.credentials import ConnectionIds
from routellm_airflow.operators import WaitForBatchesOperator
from routellm_airflow.trigger import RunBatchesTrigger

pytestmark = pytest.mark.usefixtures("provider_connections")


def submitted_run(srv: SandboxServer, root: Path, n_strong: int = 6, n_weak: int = 4, **batch) -> Path:
    """A run whose batches were created by the submit task (keys from the connections)."""
    cfg = make_config(srv, root, max_requests=3, **batch)
    write_routed(cfg, simple_rows(cfg, n_strong, n_weak))
    path = write_config_yaml(srv, root, max_requests=3, **batch)
    summary = tasks.submit(str(path), RUN_DATE, ConnectionIds())
    assert summary["submitted"] == summary["shards"] == 4
    return path


def trigger_for(path: Path, *, within: float = 60.0, cancel: bool = False) -> RunBatchesTrigger:
    cfg = tasks.load(str(path))
    return RunBatchesTrigger(
        config_path=str(path),
        run_date=RUN_DATE.isoformat(),
        ledger_uri=cfg.table_uri("ledger"),
        deadline=time.time() + within,
        poll_interval=0.05,
        cancel_on_timeout=cancel,
    )


async def first_event(trigger: RunBatchesTrigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def ledger_states(path: Path) -> list[str]:
    cfg = tasks.load(str(path))
    return sorted(r.state.value for r in Ledger.for_run(cfg, RUN_DATE).records())


def logged(capfd, caplog) -> list[str]:
    """Log lines from the trigger (Airflow's structlog writes to stdout) and the stdlib loggers."""
    return capfd.readouterr().out.splitlines() + caplog.text.splitlines()


def test_fires_when_every_batch_ended_and_logs_progress_each_poll(tmp_path, caplog, capfd):
    with SandboxServer(responder=SyntheticResponder(seed=1), tick_seconds=0.1) as srv:
        path = submitted_run(srv, tmp_path)
        with caplog.at_level(logging.INFO):
            event = asyncio.run(first_event(trigger_for(path)))

        assert event["status"] == "done" and event["run_id"] == "batchtest/2026-03-01"
        assert event["states"] == {"completed": 4}
        assert ledger_states(path) == ["completed"] * 4
        assert {b.status for b in srv.batches()} <= {"completed", "ended"}
    lines = logged(capfd, caplog)
    progress = [line for line in lines if "run batchtest/2026-03-01 poll" in line]
    assert len(progress) == event["polls"] >= 2  # one line per poll
    assert "strong: 2/2 batch(es) ended, 6/6 request(s) in ended batches" in progress[-1]
    assert "weak: 2/2 batch(es) ended, 4/4 request(s)" in progress[-1]
    assert any("provider counts" in line for line in progress[:-1])  # the provider's own counts while running
    assert not [line for line in lines if FAKE_KEY in line] and not files_containing(tmp_path, FAKE_KEY)


def test_rides_out_server_errors_and_rate_limits(tmp_path):
    faults = Faults(server_error_on=("openai.batches.retrieve#1-3",), rate_limit_on=("anthropic.batches.retrieve#1-3",))
    with SandboxServer(responder=SyntheticResponder(seed=2), faults=faults, tick_seconds=0.05) as srv:
        path = submitted_run(srv, tmp_path)
        event = asyncio.run(first_event(trigger_for(path)))
        injected = srv.stats()["faults_injected"]
    assert event["status"] == "done" and ledger_states(path) == ["completed"] * 4
    assert sum(injected.values()) >= 6, injected


def test_survives_a_sandbox_restart_mid_poll(tmp_path):
    state = tmp_path / "sandbox"
    srv = SandboxServer(responder=SyntheticResponder(seed=3), tick_seconds=0.3, state_dir=state).start()
    port = srv.port
    path = submitted_run(srv, tmp_path)

    async def restart_after_first_polls() -> None:
        nonlocal srv
        await asyncio.sleep(0.15)
        await asyncio.to_thread(srv.stop)  # connections refused while it is down
        await asyncio.sleep(0.5)
        srv = SandboxServer(responder=SyntheticResponder(seed=3), tick_seconds=0.3, port=port, state_dir=state).start()

    async def both():
        event, _ = await asyncio.gather(first_event(trigger_for(path)), restart_after_first_polls())
        return event

    try:
        event = asyncio.run(both())
        assert event["status"] == "done" and ledger_states(path) == ["completed"] * 4
        assert len(srv.batches()) == 4  # the same four batches, from the restored state
    finally:
        srv.stop()


def test_times_out_leaving_batches_running_and_the_task_says_how_to_resume(tmp_path):
    with SandboxServer(responder=SyntheticResponder(seed=4), tick_seconds=3600) as srv:
        path = submitted_run(srv, tmp_path)
        event = asyncio.run(first_event(trigger_for(path, within=0.3)))
        assert event["status"] == "timeout" and event["cancelled"] == []
        assert ledger_states(path) == ["submitted"] * 4
        assert all(b.status in ("validating", "in_progress") for b in srv.batches())

    op = WaitForBatchesOperator(task_id="wait", config_path=str(path), run_date=RUN_DATE.isoformat(), timeout_hours=0.0001)
    with pytest.raises(Exception, match="clear this task") as raised:
        op.execute_complete(context={}, event=event)
    assert "left running" in str(raised.value)


def test_cancels_on_timeout_only_when_asked(tmp_path):
    with SandboxServer(responder=SyntheticResponder(seed=5), tick_seconds=3600) as srv:
        path = submitted_run(srv, tmp_path)
        event = asyncio.run(first_event(trigger_for(path, within=0.2, cancel=True)))
        assert event["status"] == "timeout" and len(event["cancelled"]) == 4
        assert all(b.status in ("cancelling", "cancelled", "canceling", "ended") for b in srv.batches())


def test_serializes_to_where_the_run_is_and_back(tmp_path):
    trigger = RunBatchesTrigger(
        config_path=str(tmp_path / "run.yaml"),
        run_date=date(2026, 3, 1).isoformat(),
        ledger_uri=str(tmp_path / "ledger"),
        deadline=1_900_000_000.0,
        poll_interval=30,
        cancel_on_timeout=True,
        connections={"openai": "my_openai", "anthropic": "my_anthropic"},
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "routellm_airflow.trigger.RunBatchesTrigger"
    assert set(kwargs) == {"config_path", "run_date", "ledger_uri", "deadline", "poll_interval", "cancel_on_timeout", "connections"}
    import json

    again = RunBatchesTrigger(**json.loads(json.dumps(kwargs)))  # what the triggerer stores is plain JSON
    assert again.serialize() == (classpath, kwargs)


def test_refuses_to_poll_when_the_config_now_points_at_another_ledger(tmp_path):
    with SandboxServer(responder=SyntheticResponder(seed=6), tick_seconds=3600) as srv:
        path = write_config_yaml(srv, tmp_path)
        trigger = trigger_for(path)
        trigger.ledger_uri = str(tmp_path / "elsewhere" / "ledger")
        event = asyncio.run(first_event(trigger))
    assert event["status"] == "error" and "not " + str(tmp_path / "elsewhere" / "ledger") in event["message"]
