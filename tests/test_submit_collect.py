"""Stages 4-6 end to end with the real openai/anthropic SDKs against the sandbox on 127.0.0.1:
every fault the sandbox can inject, and after each, the run's promises: one final outcome per
routed row, nothing billed twice, no shard with two batches.

Each fault test prints a `FAULT-MATRIX` line (run with -s to see the matrix)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from batch_sandbox_helpers import (
    FAKE_KEY,
    KEY_ENV,
    RUN_DATE,
    all_outcomes,
    check_invariants,
    files_containing,
    make_config,
    read_responses,
    routed_row,
    simple_rows,
    write_routed,
)
from routellm_batch.ledger import Ledger, ShardState
from routellm_batch.providers.custom_id import make_custom_id
from routellm_batch.providers.retry import RetryPolicy
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch import batches
from routellm_batch.batches import aio
from routellm_batch.stages import collect, submit, wait

FAST = {"retry": RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.2)}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return FAKE_KEY


@contextmanager
def sandbox(faults: Faults | None = None, tick: float = 0.02):
    with SandboxServer(responder=SyntheticResponder(seed=0), faults=faults or Faults(), tick_seconds=tick, port=0) as srv:
        yield srv


def run_all(cfg: Any) -> tuple[Any, Any, Any]:
    s = submit.execute(cfg, RUN_DATE, provider_options=FAST)
    w = wait.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
    c = collect.execute(cfg, RUN_DATE, timeout=120, provider_options=FAST)
    assert c.done, c
    return s, w, c


def matrix(scenario: str, row: dict[str, Any]) -> None:
    print(
        f"FAULT-MATRIX | {scenario} | rows_in={row['rows_in']} | outcomes={row['outcomes']} "
        f"| errors={row['error_types']} | duplicates_billed={row['duplicates_billed']} | batches={row['batches']}"
    )


def final_by_prompt(cfg: Any) -> dict[str, dict[str, Any]]:
    return {r["prompt_id"]: r for r in read_responses(cfg).to_pylist()}


def test_happy_path_gives_one_succeeded_row_per_prompt(tmp_path: Path) -> None:
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path, max_requests=10)
        rows = simple_rows(cfg, 23, 17)
        write_routed(cfg, rows, files_per_queue=2)
        s, w, c = run_all(cfg)
        assert (s.shards, s.by_queue, s.batches_created) == (5, {"strong": 3, "weak": 2}, 5)
        assert w.done and w.duplicate_batches == []
        assert c.by_status == {"succeeded": 40}
        assert "5 shard(s)" in s.render() and "all batches terminal" in w.render() and "40 response row(s)" in c.render()
        m = check_invariants(cfg, srv, [r["prompt_id"] for r in rows])
        matrix("no fault", m)
        resp = read_responses(cfg).to_pylist()
        assert all(r["response_text"] and r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in resp)
        assert {r["finish_reason"] for r in resp} <= {"stop", "length", "end_turn", "max_tokens"}
        assert {(r["queue"], r["provider"], r["model"]) for r in resp} == {
            ("strong", "openai", "gpt-4.1"),
            ("weak", "anthropic", "claude-haiku-4-5"),
        }
        # The ledger: every shard collected, with its history of timed transitions.
        ledger = Ledger.for_run(cfg, RUN_DATE)
        for rec in ledger.records():
            assert rec.state is ShardState.COLLECTED and rec.batch_id
            states = [h.state for h in rec.history]
            assert states[:3] == [ShardState.PLANNED, ShardState.SUBMITTING, ShardState.SUBMITTED]
            assert states[-2:] == [ShardState.COMPLETED, ShardState.COLLECTED]
            assert [h.at for h in rec.history] == sorted(h.at for h in rec.history)
        table = ledger.to_arrow()
        assert table.num_rows == 5 and set(table.column("state").to_pylist()) == {"collected"}


def test_rerunning_every_stage_creates_nothing_and_rewrites_the_same_table(tmp_path: Path) -> None:
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path, max_requests=8)
        write_routed(cfg, simple_rows(cfg, 12, 9))
        run_all(cfg)
        first = read_responses(cfg).sort_by("prompt_id")
        n_batches = len(srv.batches())
        s2, _, c2 = run_all(cfg)
        assert s2.batches_created == 0 and s2.batches_adopted == 0
        assert len(srv.batches()) == n_batches
        assert read_responses(cfg).sort_by("prompt_id").equals(first)
        assert c2.rows == 21


@pytest.mark.parametrize("mode", ["disconnect", "server_error"])
def test_lost_create_answers_are_reconciled_not_recreated(tmp_path: Path, mode: str) -> None:
    faults = Faults(lose_create_on=("openai#1", "anthropic#1"), lose_create_mode=mode)
    with sandbox(faults, tick=0.05) as srv:
        cfg = make_config(srv, tmp_path, max_requests=10)
        rows = simple_rows(cfg, 15, 15)
        write_routed(cfg, rows)
        s, _, c = run_all(cfg)
        assert srv.stats()["faults_injected"]["lose_create"] == 2
        assert s.batches_adopted == 2 and s.batches_created == 2
        assert len(srv.batches()) == 4 and sum(b.lost_response for b in srv.batches()) == 2
        assert c.by_status == {"succeeded": 30}
        matrix(f"lost create answer ({mode}), both providers", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_token_limit_exceeded_batches_are_resubmitted_as_a_new_attempt(tmp_path: Path) -> None:
    with sandbox(Faults(token_limit_on=("openai#1",))) as srv:
        cfg = make_config(srv, tmp_path, max_requests=10)
        rows = simple_rows(cfg, 20, 5)
        write_routed(cfg, rows)
        _, _, c = run_all(cfg)
        failed = [r for r in Ledger.for_run(cfg, RUN_DATE).records() if r.error_type == "token_limit_exceeded"]
        assert len(failed) == 1 and failed[0].attempt == 1 and "Enqueued token limit" in (failed[0].error or "")
        final = final_by_prompt(cfg)
        assert c.by_status == {"succeeded": 25}
        assert Counter(r["attempt"] for r in final.values()) == {1: 15, 2: 10}
        matrix("batch failed: token_limit_exceeded", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_enqueued_token_budget_keeps_the_provider_limit_from_failing_batches(tmp_path: Path) -> None:
    from routellm_batch.sandbox.responders import ChatRequest, prompt_tokens

    # The provider refuses more than 100 enqueued prompt tokens per model (~13 per row here).
    with sandbox(Faults(enqueued_token_limit=100)) as srv:
        cfg = make_config(srv, tmp_path, enqueued_token_budget=100)
        rows = simple_rows(cfg, 30, 4)
        for r in rows:
            r["est_input_tokens"] = prompt_tokens(ChatRequest("openai", r["model"], (("user", r["prompt"]),)))
        write_routed(cfg, rows)
        s, w, c = run_all(cfg)
        shards = [r for r in Ledger.for_run(cfg, RUN_DATE).records() if r.queue == "strong"]
        assert len(shards) >= 4 and all(r.est_input_tokens <= 100 for r in shards)
        assert s.pending > 0  # only one strong shard may be enqueued at a time
        assert "token_limit_exceeded" not in srv.stats()["faults_injected"]
        assert c.by_status == {"succeeded": 34} and c.attempts == 1
        matrix("enqueued-token budget (provider limit 100)", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_expired_batches_keep_finished_answers_and_resubmit_the_rest(tmp_path: Path) -> None:
    with sandbox(Faults(expire_on=("openai#1", "anthropic#1"), expire_finished_share=0.5)) as srv:
        cfg = make_config(srv, tmp_path, max_requests=20)
        rows = simple_rows(cfg, 20, 20)
        write_routed(cfg, rows)
        _, _, c = run_all(cfg)
        first = [o for o in all_outcomes(cfg) if o["attempt"] == 1]
        st = Counter((o["provider"], o["status"]) for o in first)
        assert st[("openai", "expired")] > 0 and st[("openai", "succeeded")] > 0
        assert st[("anthropic", "expired")] > 0 and st[("anthropic", "succeeded")] > 0
        assert {o["error_type"] for o in first if o["status"] == "expired"} == {"batch_expired"}
        assert c.by_status == {"succeeded": 40}
        matrix("batch expired with partial results", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_errored_lines_of_every_kind_map_and_only_invalid_requests_stay_final(tmp_path: Path) -> None:
    kinds = ["invalid_request", "server_error", "overloaded", "expired", "canceled"]
    probe = make_config(type("S", (), {"openai_base_url": "x", "anthropic_base_url": "y"})(), tmp_path)
    run_id = probe.run_id(RUN_DATE)
    errors = {}
    for q in ("s", "w"):
        for i, kind in enumerate(kinds):
            errors[make_custom_id(run_id, f"{q}{i:05d}", 1)] = kind
    with sandbox(Faults(request_errors=errors, request_error_times=1)) as srv:
        cfg = make_config(srv, tmp_path, max_requests=50)
        rows = simple_rows(cfg, 8, 8)
        write_routed(cfg, rows)
        _, _, c = run_all(cfg)
        first = {o["prompt_id"]: o for o in all_outcomes(cfg) if o["attempt"] == 1}
        expected = {
            "invalid_request": ("errored", "invalid_request"),
            "server_error": ("errored", "server_error"),
            "overloaded": ("errored", "overloaded"),
            "expired": ("expired", "batch_expired"),
            "canceled": ("canceled", "batch_cancelled"),
        }
        for q in ("s", "w"):
            for i, kind in enumerate(kinds):
                o = first[f"{q}{i:05d}"]
                assert (o["status"], o["error_type"]) == expected[kind], (q, kind, o)
                assert o["error_message"]
        final = final_by_prompt(cfg)
        for q in ("s", "w"):
            assert final[f"{q}00000"]["status"] == "errored" and final[f"{q}00000"]["attempt"] == 1
            for i in range(1, 5):
                assert final[f"{q}{i:05d}"]["status"] == "succeeded" and final[f"{q}{i:05d}"]["attempt"] == 2
        assert c.by_status == {"succeeded": 14, "errored": 2}
        matrix("errored lines (all kinds, both providers)", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_retryable_errors_give_up_after_max_attempts(tmp_path: Path) -> None:
    probe = make_config(type("S", (), {"openai_base_url": "x", "anthropic_base_url": "y"})(), tmp_path)
    run_id = probe.run_id(RUN_DATE)
    errors = {make_custom_id(run_id, "s00000", a): "server_error" for a in (1, 2)}
    errors |= {make_custom_id(run_id, "w00000", a): "overloaded" for a in (1, 2)}
    with sandbox(Faults(request_errors=errors, request_error_times=0)) as srv:
        cfg = make_config(srv, tmp_path, max_attempts=2)
        rows = simple_rows(cfg, 3, 3)
        write_routed(cfg, rows)
        run_all(cfg)
        final = final_by_prompt(cfg)
        for pid, etype in (("s00000", "server_error"), ("w00000", "overloaded")):
            assert (final[pid]["status"], final[pid]["error_type"], final[pid]["attempt"]) == ("errored", etype, 2)
            assert "gave up after 2 attempts" in final[pid]["error_message"]
        matrix("retryable error on every attempt (max_attempts=2)", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_malformed_result_lines_do_not_crash_or_lose_rows(tmp_path: Path) -> None:
    with sandbox(Faults(malformed_line_on=("openai#1", "anthropic#1"))) as srv:
        cfg = make_config(srv, tmp_path)
        rows = simple_rows(cfg, 9, 9)
        write_routed(cfg, rows)
        _, _, c = run_all(cfg)
        assert c.by_status == {"succeeded": 18}
        notes = " ".join(h.note for r in Ledger.for_run(cfg, RUN_DATE).records() for h in r.history)
        assert notes.count("1 unparseable line(s)") == 2
        matrix("malformed result line (both providers)", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def _truncate_third_line(ctx: Any, rel: str) -> str:
    """Cut the third line of a stored result file in half; returns its custom_id."""
    lines = ctx.ledger.read_bytes(rel).splitlines()
    cid = re.search(rb'"custom_id"\s*:\s*"([^"]+)"', lines[2]).group(1).decode()
    lines[2] = lines[2][: len(lines[2]) // 2]
    ctx.ledger.write_bytes(rel, b"\n".join(lines) + b"\n")
    return cid


def _submitted_and_finished(cfg: Any) -> Any:
    submit.execute(cfg, RUN_DATE, provider_options=FAST)
    wait.execute(cfg, RUN_DATE, timeout=30, provider_options=FAST)
    return batches.open_run(cfg, RUN_DATE, provider_options=FAST)


def test_a_result_line_broken_in_the_download_is_fetched_again(tmp_path: Path) -> None:
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path)
        rows = simple_rows(cfg, 6, 6)
        write_routed(cfg, rows)
        ctx = _submitted_and_finished(cfg)
        for rec in ctx.ledger.records():
            provider = ctx.provider(rec.queue)
            info = provider.retrieve(rec.batch_id)
            _truncate_third_line(ctx, collect._download(ctx, provider, rec, info, provider.result_sources(info)[0]))
        ctx.close()
        c = collect.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
        assert c.by_status == {"succeeded": 12} and c.attempts == 1
        # Both copies are kept: the broken first download and the fresh one.
        assert len(list((tmp_path / "ledger").rglob("results/*/*-redownload.jsonl"))) == 2
        assert len(list((tmp_path / "ledger").rglob("results/*/*.jsonl"))) == 4
        matrix("result line truncated in the download", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_an_unreadable_line_is_resubmitted_only_when_it_was_not_billed(tmp_path: Path) -> None:
    """A provider file with a broken line (both downloads alike): an answer that may have been
    billed becomes a terminal error row (never paid twice); a failed request's line is retried."""
    probe = make_config(type("S", (), {"openai_base_url": "x", "anthropic_base_url": "y"})(), tmp_path)
    errors = {make_custom_id(probe.run_id(RUN_DATE), f"s{i:05d}", 1): "server_error" for i in range(3)}
    with sandbox(Faults(request_errors=errors)) as srv:
        cfg = make_config(srv, tmp_path)
        rows = simple_rows(cfg, 6, 6)
        write_routed(cfg, rows)
        ctx = _submitted_and_finished(cfg)
        broken = {}
        for rec in ctx.ledger.records():
            provider = ctx.provider(rec.queue)
            info = provider.retrieve(rec.batch_id)
            for source in provider.result_sources(info):
                first = collect._download(ctx, provider, rec, info, source)
                again = collect._download(ctx, provider, rec, info, source, again=True)
                broken[_truncate_third_line(ctx, first)] = source
                _truncate_third_line(ctx, again)
        ctx.close()
        assert sorted(broken.values()) == ["errors", "output", "results"]
        c = collect.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
        final = {r["custom_id"]: r for r in all_outcomes(cfg) if r["attempt"] == 1}
        for cid, source in broken.items():
            row = final[cid]
            if source == "errors":
                assert (row["error_type"], row["final"]) == ("malformed_result", False)
            else:
                assert (row["error_type"], row["final"]) == ("malformed_billed_result", True)
                assert "not resubmitted" in row["error_message"] and "line 3" in row["error_message"]
        assert c.by_status == {"succeeded": 10, "errored": 2} and c.attempts == 2
        matrix("unreadable result line in the provider's file", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_a_batch_failing_validation_reports_the_providers_reason_in_each_row(tmp_path: Path) -> None:
    with sandbox(Faults(validation_failure_on=("openai#2",))) as srv:
        cfg = make_config(srv, tmp_path, max_requests=5)
        rows = simple_rows(cfg, 12, 3)
        write_routed(cfg, rows)
        _, _, c = run_all(cfg)
        bad = [r for r in read_responses(cfg).to_pylist() if r["status"] != "succeeded"]
        assert len(bad) == 5 and c.attempts == 1
        for r in bad:
            assert r["error_type"] == "batch_validation_failed" and r["batch_id"]
            assert "failed validation" in r["error_message"] and "invalid_request" in r["error_message"]
        matrix("whole batch failed validation", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_rate_limits_and_server_errors_on_every_call_are_retried_without_duplicates(tmp_path: Path) -> None:
    faults = Faults(
        seed=3,
        rate_limit_share=0.2,
        server_error_share=0.1,
        overloaded_share=0.1,  # Anthropic 529 / OpenAI 503, with Retry-After
        # A 500 on create is ambiguous: reconciled (nothing found) before the create is tried again.
        server_error_on=("openai.batches.create#2", "anthropic.batches.create#1", "*.retrieve#3", "openai.files.content#1"),
        rate_limit_on=("anthropic.batches.create#2",),
        overloaded_on=("anthropic.batches.retrieve#2",),
    )
    with sandbox(faults) as srv:
        cfg = make_config(srv, tmp_path, max_requests=6)
        rows = simple_rows(cfg, 20, 14)
        write_routed(cfg, rows)
        _, _, c = run_all(cfg)
        injected = srv.stats()["faults_injected"]
        assert injected.get("rate_limit", 0) > 0 and injected.get("server_error", 0) > 0 and injected.get("overloaded", 0) > 0
        assert c.by_status == {"succeeded": 34}
        assert len(srv.batches()) == len(Ledger.for_run(cfg, RUN_DATE).records())
        matrix("429 (20%), 529/503 overloaded (10%) and 500 (10% + on creates) on every endpoint", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


def test_rows_that_cannot_become_requests_are_terminal_error_rows(tmp_path: Path) -> None:
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path, max_bytes=4000)
        rows = simple_rows(cfg, 3, 3) + [
            routed_row(cfg, "strong", "empty", prompt="   "),
            routed_row(cfg, "weak", "none", prompt=None) | {"prompt": None},
            routed_row(cfg, "strong", "huge", prompt="x" * 5000),
            routed_row(cfg, "weak", "chat", prompt=None, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]),
            routed_row(cfg, "strong", "sys", system="Answer in French.", max_tokens=7),
        ]
        rows[-4]["prompt"] = None
        write_routed(cfg, rows)
        s, _, c = run_all(cfg)
        assert s.rows_rejected == 3
        final = final_by_prompt(cfg)
        assert final["empty"]["error_type"] == final["none"]["error_type"] == "invalid_request"
        assert "neither a prompt nor messages" in final["none"]["error_message"]
        assert final["huge"]["error_type"] == "request_too_large" and "4000" in final["huge"]["error_message"]
        assert final["chat"]["status"] == final["sys"]["status"] == "succeeded"
        assert final["sys"]["output_tokens"] <= 7
        assert c.by_status == {"succeeded": 8, "errored": 3}
        check_invariants(cfg, srv, [r["prompt_id"] for r in rows])


def test_weird_prompt_ids_round_trip_through_custom_ids(tmp_path: Path) -> None:
    weird = [
        "日本語の質問/1",
        "a/b/c?d=e&f",
        "x" * 200,
        "x" * 199 + "y",
        "same id",
        "same_id",
        "same-id",
        "same\tid",
        "",
        "emoji 🚀 id",
        "../../etc/passwd",
    ]
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path, max_requests=4)
        rows = [routed_row(cfg, "strong" if i % 2 else "weak", pid) for i, pid in enumerate(weird)]
        write_routed(cfg, rows)
        run_all(cfg)
        final = final_by_prompt(cfg)
        assert set(final) == set(weird)
        cids = [r["custom_id"] for r in final.values()]
        assert len(set(cids)) == len(cids)
        assert all(r["status"] == "succeeded" for r in final.values())
        check_invariants(cfg, srv, weird)


def test_queues_larger_than_one_batch_are_split_within_requests_and_bytes(tmp_path: Path) -> None:
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path, max_requests=7, max_bytes=1200)
        rows = simple_rows(cfg, 40, 33)
        write_routed(cfg, rows, files_per_queue=3)
        run_all(cfg)
        ledger = Ledger.for_run(cfg, RUN_DATE)
        records = ledger.records()
        for r in records:
            assert r.row_count <= 7 and r.bytes <= 1200
            assert len(ledger.read_bytes(Ledger.input_rel(r.shard_id))) == r.bytes
        assert sum(r.row_count for r in records) == 73
        # Bytes, not requests, bound at least one queue's shards here.
        assert any(r.row_count < 7 for r in records if r.index < max(x.index for x in records if x.queue == r.queue))
        assert max(len(b.custom_ids) for b in srv.batches()) <= 7
        check_invariants(cfg, srv, [r["prompt_id"] for r in rows])


def test_an_unverified_anthropic_batch_that_proves_foreign_is_replaced(tmp_path: Path) -> None:
    """The residual risk of reconciling without metadata: a same-size batch of someone else's,
    created in the intent's window while our create was lost, is adopted until its custom_ids
    can be read; then it is released and the shard is created. Nothing is paid twice."""
    import anthropic

    from routellm_batch.ledger import utcnow

    with sandbox(tick=0.3) as srv:
        cfg = make_config(srv, tmp_path, max_requests=50)
        rows = simple_rows(cfg, 0, 4)
        write_routed(cfg, rows)
        ctx = batches.open_run(cfg, RUN_DATE, provider_options=FAST)
        batches.plan_queue(ctx, "strong")
        plan = batches.plan_queue(ctx, "weak")
        rec = plan.shards[0]
        # Our process "crashed" right after recording the intent; the create never left.
        ctx.ledger.advance(rec, ShardState.SUBMITTING, note="create try 1", intent_at=utcnow(), create_timeout_s=0.2)
        other = anthropic.Anthropic(base_url=srv.anthropic_base_url, api_key="another-tenant", max_retries=0)
        foreign = other.messages.batches.create(
            requests=[
                {"custom_id": f"theirs-{i}", "params": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}
                for i in range(4)
            ]
        )
        ctx.close()
        s = submit.execute(cfg, RUN_DATE, provider_options=FAST)
        assert s.batches_adopted == 1
        rec = Ledger.for_run(cfg, RUN_DATE).get(rec.shard_id)
        assert rec.batch_id == foreign.id and not rec.batch_verified
        c = collect.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
        rec = Ledger.for_run(cfg, RUN_DATE).get(rec.shard_id)
        assert rec.foreign_batch_ids == (foreign.id,) and rec.batch_id != foreign.id
        assert c.by_status == {"succeeded": 4}
        assert all(r["batch_id"] == rec.batch_id for r in read_responses(cfg).to_pylist())
        check_invariants(cfg, srv, [r["prompt_id"] for r in rows], not_ours=[foreign.id])


def test_async_poll_once_updates_the_ledger_like_the_sync_poll(tmp_path: Path) -> None:
    import asyncio
    import time

    with sandbox(tick=0.05) as srv:
        cfg = make_config(srv, tmp_path, max_requests=5)
        write_routed(cfg, simple_rows(cfg, 6, 6))
        submit.execute(cfg, RUN_DATE, provider_options=FAST)
        # Wait on the condition (every sandbox batch has ended), not on a fixed time: a loaded
        # machine can take longer than any sleep. The deadline only stops a hang.
        deadline = time.monotonic() + 60
        while {b.status for b in srv.batches()} - {"completed", "ended"}:
            assert time.monotonic() < deadline, [b.status for b in srv.batches()]
            time.sleep(0.02)
        report = asyncio.run(aio.apoll_once(cfg, RUN_DATE))
        assert report.done and set(report.states.values()) == {"completed"}
        assert all(r.provider_status in ("completed", "ended") for r in Ledger.for_run(cfg, RUN_DATE).records())


def test_the_api_key_never_reaches_files_logs_or_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from routellm_batch.providers.errors import CredentialsError

    caplog.set_level(logging.DEBUG)
    faults = Faults(seed=1, rate_limit_share=0.1, server_error_share=0.1, lose_create_on=("openai#1",), request_error_share=0.2,
                    request_error_kinds=("invalid_request", "server_error"), malformed_line_on=("anthropic#1",))  # fmt: skip
    with sandbox(faults) as srv:
        cfg = make_config(srv, tmp_path, max_requests=5)
        rows = simple_rows(cfg, 8, 8)
        write_routed(cfg, rows)
        run_all(cfg)
        check_invariants(cfg, srv, [r["prompt_id"] for r in rows])
    assert files_containing(tmp_path, FAKE_KEY) == []
    assert FAKE_KEY not in caplog.text
    assert caplog.text.count("sandbox fault") > 0  # the errors were logged, without the key
    # A missing variable is named; no value is shown.
    monkeypatch.delenv(KEY_ENV)
    with sandbox() as srv:
        cfg = make_config(srv, tmp_path / "other")
        write_routed(cfg, simple_rows(cfg, 1, 0))
        with pytest.raises(CredentialsError, match=KEY_ENV) as exc:
            submit.execute(cfg, RUN_DATE, provider_options=FAST)
        assert FAKE_KEY not in str(exc.value)


def test_a_shard_the_provider_refuses_becomes_error_rows_with_its_reason(tmp_path: Path) -> None:
    """Limits set wrong in config (above what the provider takes): Anthropic refuses the create
    (400), OpenAI fails the batch in validation; both reasons reach every row, nothing retried."""
    from routellm_batch.sandbox.store import Limits

    limits = Limits(openai_max_requests=3, anthropic_max_requests=3)
    with SandboxServer(responder=SyntheticResponder(seed=0), tick_seconds=0.02, port=0, limits=limits) as srv:
        cfg = make_config(srv, tmp_path, max_requests=6)
        rows = simple_rows(cfg, 6, 6)
        write_routed(cfg, rows)
        s, _, c = run_all(cfg)
        assert s.refused == 1  # Anthropic refuses the create; OpenAI takes it, then fails it
        assert c.by_status == {"errored": 12} and c.attempts == 1
        for r in read_responses(cfg).to_pylist():
            if r["provider"] == "anthropic":
                assert r["error_type"] == "invalid_request" and r["batch_id"] is None
                assert "at most 3 requests per batch" in r["error_message"]
            else:
                assert r["error_type"] == "batch_validation_failed" and "too_many_requests" in r["error_message"]
        matrix("provider refuses the shard (limits above the provider's)", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


# -- a batch list that lags behind creates -------------------------------------------------------------


def test_a_lagging_batch_list_never_leads_to_a_second_create(tmp_path: Path) -> None:
    """Both creates' answers are lost and neither batch shows in `list` for 1.5 s: reconciliation
    keeps listing for batch.list_lag_seconds and adopts each batch; nothing is created twice."""
    faults = Faults(lose_create_on=("openai#1", "anthropic#1"), lose_create_mode="server_error", list_lag_seconds=1.5)
    with sandbox(faults) as srv:
        cfg = make_config(srv, tmp_path, max_requests=50, list_lag_seconds=3.0)
        rows = simple_rows(cfg, 3, 3)
        write_routed(cfg, rows)
        s, w, c = run_all(cfg)
        assert (s.batches_created, s.batches_adopted) == (0, 2)
        assert len(srv.batches()) == 2 and all(b.lost_response for b in srv.batches())
        assert w.duplicate_batches == [] and c.by_status == {"succeeded": 6}
        matrix("lost creates + list lag 1.5 s (allowance 3 s)", check_invariants(cfg, srv, [r["prompt_id"] for r in rows]))


class _SandboxTime:
    """The sandbox's clock, moved only when our code waits (ctx.sleep): a deterministic timeline."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def _drive_openai_shard(tmp_path: Path, faults: Faults) -> tuple[Any, Any, Any]:
    """One OpenAI shard through submit and wait, on sandbox time that moves only when we wait."""
    clock = _SandboxTime()
    srv = SandboxServer(responder=SyntheticResponder(seed=0), faults=faults, tick_seconds=1.0, clock=clock).start()
    # list_lag_seconds=0: the client trusts the list at once, shorter than the provider's lag.
    cfg = make_config(srv, tmp_path, max_requests=50, list_lag_seconds=0)
    write_routed(cfg, simple_rows(cfg, 4, 0))
    ctx = batches.open_run(cfg, RUN_DATE, provider_options=FAST)
    ctx.sleep = clock.sleep
    batches.plan_queue(ctx, "strong")
    batches.plan_queue(ctx, "weak")
    batches.submit_pending(ctx)
    report, _ = wait.drive(ctx, timeout=None, poll_interval=0.05)
    assert report.done
    clock.sleep(2.0)  # a cancelled batch ends one tick after its cancel
    return srv, ctx, cfg


def test_a_duplicate_that_shows_in_the_list_late_is_cancelled_before_it_is_billed(tmp_path: Path) -> None:
    """The first create's answer is lost and its batch stays out of the list for 2 s, longer than the
    client allows: the shard is created again. The per-round sweep finds the late one while it
    still runs and cancels it; only the ledger's batch is billed."""
    faults = Faults(lose_create_on=("openai#1",), lose_create_mode="server_error", list_lag_seconds=2.0, list_lag_on=("openai#1",))
    srv, ctx, cfg = _drive_openai_shard(tmp_path, faults)
    try:
        (rec,) = Ledger.for_run(cfg, RUN_DATE).records()
        first, second = srv.batches()
        assert first.lost_response and rec.batch_id == second.id  # a real duplicate: two batches, one shard
        assert ctx.duplicates == {first.id} and first.status == "cancelled" and second.status == "completed"
        billed = srv.billed()
        assert set(billed.values()) == {1} and {cid for _, cid in billed} == set(second.custom_ids)
        assert {b.batch_id for b in srv.billing()} == {second.id}
        # Nothing was paid twice, but the shard did go out twice: the invariant checker says so.
        assert collect.execute(cfg, RUN_DATE, timeout=30, provider_options=FAST).by_status == {"succeeded": 4}
        with pytest.raises(AssertionError, match="sent in more than one batch"):
            check_invariants(cfg, srv, [f"s{i:05d}" for i in range(4)])
    finally:
        ctx.close()
        srv.stop()


def test_two_batches_found_for_one_intent_keep_the_oldest_and_cancel_the_other(tmp_path: Path) -> None:
    """Two creates' answers are lost; the first batch lags in the list, so the second create goes
    out. The next reconciliation sees both: the oldest is adopted, the spare cancelled unbilled."""
    faults = Faults(lose_create_on=("openai#1-2",), lose_create_mode="server_error", list_lag_seconds=2.0, list_lag_on=("openai#1",))
    srv, ctx, cfg = _drive_openai_shard(tmp_path, faults)
    try:
        (rec,) = Ledger.for_run(cfg, RUN_DATE).records()
        first, second = srv.batches()
        assert first.lost_response and second.lost_response
        assert rec.batch_id == first.id and ctx.adopted == 1 and ctx.duplicates == {second.id}
        assert (first.status, second.status) == ("completed", "cancelled")
        assert {b.batch_id for b in srv.billing()} == {first.id} and set(srv.billed().values()) == {1}
        assert srv.stats()["calls"]["openai.batches.cancel"] == 1  # the sweep does not cancel it again
    finally:
        ctx.close()
        srv.stop()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_used_up_quota_stops_the_run_at_the_first_answer_with_a_clear_message(tmp_path: Path, provider: str) -> None:
    from routellm_batch.providers.errors import QuotaExhaustedError

    endpoint = "openai.batches.create" if provider == "openai" else "anthropic.batches.create"
    with sandbox(Faults(quota_exceeded_on=(endpoint,))) as srv:
        cfg = make_config(srv, tmp_path, max_requests=50)
        write_routed(cfg, simple_rows(cfg, 3 if provider == "openai" else 0, 3 if provider == "anthropic" else 0))
        with pytest.raises(QuotaExhaustedError, match="quota or spend limit is used up") as exc:
            submit.execute(cfg, RUN_DATE, provider_options=FAST)
        assert srv.stats()["calls"][endpoint] == 1 and srv.batches() == []  # not retried, nothing created
        assert FAKE_KEY not in str(exc.value)
        (rec,) = Ledger.for_run(cfg, RUN_DATE).records()
        assert rec.state is ShardState.PLANNED and rec.error_type == "billing"  # a re-run, once the limit is raised, creates it


def test_a_rejected_key_quoted_back_by_the_provider_reaches_no_exception_or_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """OpenAI's 401 says "Incorrect API key provided: <the key>": our error names the failure, not the key."""
    from routellm_batch.providers.errors import CredentialsError

    caplog.set_level(logging.DEBUG)
    with sandbox(Faults(rejected_api_keys=(FAKE_KEY,))) as srv:
        cfg = make_config(srv, tmp_path)
        write_routed(cfg, simple_rows(cfg, 2, 0))
        with pytest.raises(CredentialsError, match=r"HTTP 401: invalid_request_error: Incorrect API key provided: \[redacted\]") as exc:
            submit.execute(cfg, RUN_DATE, provider_options=FAST)
    assert FAKE_KEY not in str(exc.value) and FAKE_KEY not in repr(exc.value.args)
    assert FAKE_KEY not in caplog.text and files_containing(tmp_path, FAKE_KEY) == []
