"""The run lease: one process per run date; a dead or silent holder does not block forever."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, RUN_DATE, check_invariants, make_config, simple_rows, write_config_yaml, write_routed
from routellm_batch.lease import Holder, LeaseHeld, acquire, lease_uri, run_lease
from routellm_batch.ledger import utcnow
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parents[1]


def _holder_file(folder: Path, gen: int, **fields) -> Path:
    now = utcnow()
    raw = {
        "run_id": "job/2026-03-01", "stage": "submit", "host": "other-host", "pid": 4242, "pid_start": None,
        "token": "t", "since": (now - timedelta(hours=1)).isoformat(), "expires_at": (now + timedelta(hours=1)).isoformat(),
    }  # fmt: skip
    raw.update({k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in fields.items()})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{gen:012d}.json"
    path.write_text(json.dumps(raw))
    return path


def test_second_holder_fails_at_once_naming_host_pid_and_since(tmp_path: Path) -> None:
    lease = acquire(str(tmp_path / "lease"), "job/2026-03-01", "submit")
    try:
        code = f"from routellm_batch.lease import acquire; acquire({str(tmp_path / 'lease')!r}, 'job/2026-03-01', 'collect')"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert f"host {socket.gethostname()} pid {os.getpid()} since " in last and "(stage submit)" in last
    finally:
        lease.release()
    # Released: the next process gets it.
    acquire(str(tmp_path / "lease"), "job/2026-03-01", "collect").release()


def test_live_holder_on_another_host_blocks_until_it_expires(tmp_path: Path) -> None:
    folder = tmp_path / "lease"
    _holder_file(folder, 1, host="other-host")
    with pytest.raises(LeaseHeld, match=r"host other-host pid 4242 since .* \(stage submit\)"):
        acquire(str(folder), "job/2026-03-01", "collect")


def test_expired_lease_of_a_silent_holder_is_taken_over(tmp_path: Path) -> None:
    folder = tmp_path / "lease"
    _holder_file(folder, 3, host="other-host", expires_at=utcnow() - timedelta(seconds=1))
    lease = acquire(str(folder), "job/2026-03-01", "collect")
    try:
        assert lease.gen == 4
        assert sorted(p.name for p in folder.iterdir()) == ["000000000004.json"]  # the stale generation is gone
    finally:
        lease.release()


def test_dead_holder_on_this_host_is_taken_over_before_expiry(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "lease"
    _holder_file(folder, 1, host=socket.gethostname(), pid=dead.pid)
    lease = acquire(str(folder), "job/2026-03-01", "collect")
    lease.release()


def test_heartbeat_renews_so_a_slow_holder_keeps_its_lease(tmp_path: Path) -> None:
    folder = tmp_path / "lease"
    lease = acquire(str(folder), "job/2026-03-01", "submit", ttl=0.4)
    try:
        first_expiry = lease.holder.expires_at
        time.sleep(1.0)  # 2.5 ttls: without renewals it would have expired
        on_disk = Holder.from_bytes((folder / "000000000001.json").read_bytes())
        assert on_disk.expires_at > first_expiry
        # Seen from another host (no pid check), the lease is still live.
        assert on_disk.alive(utcnow())
    finally:
        lease.release()
    assert Holder.from_bytes((folder / "000000000001.json").read_bytes()).released


def test_holder_that_lost_its_lease_stops_its_main_thread(tmp_path: Path) -> None:
    folder = tmp_path / "lease"
    script = textwrap.dedent(
        f"""
        import json, time
        from routellm_batch.lease import acquire
        lease = acquire({str(folder)!r}, "job/2026-03-01", "collect", ttl=0.4)
        open({str(folder / "000000000002.json")!r}, "w").write(json.dumps(dict(
            run_id="job/2026-03-01", stage="collect", host="other-host", pid=1, pid_start=None, token="x",
            since="2026-03-01T00:00:00+00:00", expires_at="2099-01-01T00:00:00+00:00")))
        try:
            time.sleep(30)
            print("still working")
        except KeyboardInterrupt:
            print("stopped: lease lost")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() == "stopped: lease lost", proc.stderr
    assert "lease lost to host other-host pid 1" in proc.stderr


def test_lease_is_reentrant_within_one_process(tmp_path: Path) -> None:
    cfg = make_config(_NoServer(), tmp_path)
    with run_lease(cfg, RUN_DATE, "run") as outer, run_lease(cfg, RUN_DATE, "submit") as inner:
        assert inner is outer
    # Released once, after the outer block.
    gens = sorted(Path(lease_uri(cfg, RUN_DATE)).iterdir())
    assert Holder.from_bytes(gens[-1].read_bytes()).released


def test_two_racing_acquirers_get_one_lease(tmp_path: Path) -> None:
    folder = str(tmp_path / "lease")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        try:
            acquire(folder, "job/2026-03-01", "submit", ttl=60)
            results.append("won")
        except LeaseHeld:
            results.append("held")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] * 7 + ["won"]


class _NoServer:
    openai_base_url = "http://127.0.0.1:9/v1"
    anthropic_base_url = "http://127.0.0.1:9"


def test_two_collects_at_once_one_fails_fast_and_nothing_is_billed_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two schedulers' retries overlap on one run date: the plan exists, no batch yet; both would create them."""
    from routellm_batch.batches import QUEUES, open_run, plan_queue

    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with SandboxServer(responder=SyntheticResponder(seed=3), tick_seconds=1.0, port=0, state_dir=tmp_path / "sandbox") as srv:
        cfg = make_config(srv, tmp_path / "out", max_requests=4)
        rows = simple_rows(cfg, 16, 12)
        write_routed(cfg, rows)
        ctx = open_run(cfg, RUN_DATE)
        try:
            for queue in QUEUES:
                plan_queue(ctx, queue)
        finally:
            ctx.close()
        conf = write_config_yaml(srv, tmp_path / "out", max_requests=4)
        env = {**os.environ, KEY_ENV: FAKE_KEY}
        cmd = [sys.executable, "-m", "routellm_batch.cli", "collect", "--config", str(conf), "--run-date", RUN_DATE.isoformat(), "--timeout", "120"]
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=240) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 75], outs
        loser_err = outs[[p.returncode for p in procs].index(75)][1]
        assert loser_err.count("\n") == 1 and "Traceback" not in loser_err
        assert f"is being worked on by host {socket.gethostname()} pid " in loser_err and "(stage collect)" in loser_err
        check_invariants(cfg, srv, [r["prompt_id"] for r in rows])
    # The sandbox's persisted books agree: every request billed once.
    with SandboxServer(responder=SyntheticResponder(seed=3), port=0, state_dir=tmp_path / "sandbox") as again:
        billed = again.billed()
        assert len(billed) == len(rows) and set(billed.values()) == {1}
