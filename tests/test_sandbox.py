"""The sandbox server, driven through the official openai and anthropic SDKs over 127.0.0.1."""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import openai
import pytest

from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.responders import ChatRequest, ReplayResponder, SyntheticResponder
from routellm_batch.sandbox.server import Limits, SandboxServer, StateError

# 200 GSM8K prompts with recorded answers, shipped in the package (so this always runs).
GSM8K_CSV = Path(str(importlib.resources.files("routellm_batch.demo") / "gsm8k_demo.csv"))
KEY = "sk-sandbox-test-key-0123456789"


class FakeClock:
    """Drives batch progress by hand: one `advance()` = one state step at tick_seconds=1."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, steps: float = 1.0) -> None:
        self.t += steps


def chat_line(cid: str, prompt: str, model: str = "gpt-4.1", **body: object) -> dict:
    return {
        "custom_id": cid,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}], **body},
    }


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def oai(srv: SandboxServer, **kw: object) -> openai.OpenAI:
    kw.setdefault("max_retries", 0)
    kw.setdefault("api_key", KEY)
    return openai.OpenAI(base_url=srv.openai_base_url, **kw)  # type: ignore[arg-type]


def ant(srv: SandboxServer, **kw: object) -> anthropic.Anthropic:
    kw.setdefault("max_retries", 0)
    kw.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=srv.anthropic_base_url, **kw)  # type: ignore[arg-type]


def submit_openai(client: openai.OpenAI, lines: list[dict], metadata: dict | None = None):
    f = client.files.create(file=("shard.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata
    )


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def anthropic_request(cid: str, prompt: str, model: str = "claude-haiku-4-5", max_tokens: int = 200) -> dict:
    return {"custom_id": cid, "params": {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}}


def raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- OpenAI lifecycle --------------------------------------------------------------------------
def test_openai_batch_advances_through_states_and_returns_shuffled_output(clock: FakeClock) -> None:
    lines = [chat_line(f"req-{i:02d}", f"What is {i} plus {i}?", max_tokens=500) for i in range(20)]
    with SandboxServer(SyntheticResponder(seed=1), tick_seconds=1.0, clock=clock) as srv:
        client = oai(srv)
        batch = submit_openai(client, lines, {"run_id": "job/2026-01-01", "shard": "strong-0000"})
        seen = [batch.status]
        for _ in range(3):
            assert client.batches.retrieve(batch.id).output_file_id is None
            clock.advance()
            seen.append(client.batches.retrieve(batch.id).status)
        assert seen == ["validating", "in_progress", "finalizing", "completed"]

        done = client.batches.retrieve(batch.id)
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (20, 20, 0)
        assert done.error_file_id is None
        assert done.metadata == {"run_id": "job/2026-01-01", "shard": "strong-0000"}
        out = read_lines(client, done.output_file_id)
        ids = [x["custom_id"] for x in out]
        assert sorted(ids) == [x["custom_id"] for x in lines]
        assert ids != [x["custom_id"] for x in lines], "results must not come back in input order"
        for row in out:
            assert row["error"] is None and row["id"].startswith("batch_req_")
            assert row["response"]["status_code"] == 200
            body = row["response"]["body"]
            assert body["object"] == "chat.completion" and body["model"] == "gpt-4.1"
            assert body["choices"][0]["finish_reason"] == "stop"
            usage = body["usage"]
            assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        # Batch usage is the sum of its lines; every request was billed exactly once.
        assert done.usage is not None
        assert done.usage.output_tokens == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in out)
        assert srv.billed() == {("openai", x["custom_id"]): 1 for x in lines}
        assert srv.billed_tokens()[("openai", "gpt-4.1")]["output_tokens"] == done.usage.output_tokens
        # The input file reads back unchanged.
        assert client.files.content(done.input_file_id).content == jsonl(lines)


def test_synthetic_answers_are_deterministic_and_cut_at_max_tokens() -> None:
    responder = SyntheticResponder(seed=3)
    req = ChatRequest("openai", "gpt-4.1", (("user", "Why is the sky blue?"),))
    assert responder.respond(req) == responder.respond(req)
    assert responder.respond(req) != SyntheticResponder(seed=4).respond(req)
    short = responder.respond(ChatRequest("openai", "gpt-4.1", req.messages, max_tokens=3))
    assert short.truncated and short.output_tokens == 3
    assert responder.respond(req).input_tokens == short.input_tokens


def test_openai_error_file_holds_both_error_line_shapes() -> None:
    lines = [chat_line(f"r{i}", f"question {i}") for i in range(6)]
    lines.append({"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4.1"}})
    faults = Faults(request_errors={"r1": "invalid_request", "r2": "server_error", "r3": "overloaded", "r4": "canceled"})
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        client = oai(srv)
        batch = client.batches.retrieve(submit_openai(client, lines).id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 5)
        errors = {x["custom_id"]: x for x in read_lines(client, batch.error_file_id)}
        assert set(errors) == {"r1", "r2", "r3", "r4", "no-messages"}
        # Shape 1: an HTTP failure keeps `response` with a non-200 status and body.error; error is null.
        for cid, status, etype in [("r1", 400, "invalid_request_error"), ("r2", 500, "server_error"), ("r3", 503, "server_error"), ("no-messages", 400, "invalid_request_error")]:
            line = errors[cid]
            assert line["error"] is None
            assert line["response"]["status_code"] == status
            assert line["response"]["body"]["error"]["type"] == etype
        assert "messages" in errors["no-messages"]["response"]["body"]["error"]["message"]
        # Shape 2: a request that never ran has response null and an error object.
        assert errors["r4"]["response"] is None
        assert errors["r4"]["error"]["code"] == "batch_cancelled"
        assert {x["custom_id"] for x in read_lines(client, batch.output_file_id)} == {"r0", "r5"}
        assert srv.billed() == {("openai", "r0"): 1, ("openai", "r5"): 1}


def test_openai_batch_failing_validation_lists_reasons_in_errors() -> None:
    lines = [chat_line("a", "x"), chat_line("a", "y"), chat_line("b", "z", model="gpt-4o-mini")]
    lines.append({"custom_id": "c", "method": "GET", "url": "/v1/embeddings", "body": {"model": "gpt-4.1"}})
    with SandboxServer(tick_seconds=0) as srv:
        client = oai(srv)
        batch = client.batches.retrieve(submit_openai(client, lines).id)
        assert batch.status == "failed"
        assert batch.errors is not None and batch.errors.data is not None
        codes = {(e.code, e.line) for e in batch.errors.data}
        assert {("duplicate_custom_id", 2), ("mismatched_model", 3), ("invalid_method", 4), ("invalid_url", 4)} <= codes
        assert batch.output_file_id is None and batch.error_file_id is None
        assert srv.billed() == {}


def test_validation_failure_fault_fails_an_otherwise_valid_batch() -> None:
    with SandboxServer(faults=Faults(validation_failure_on=("openai#2",)), tick_seconds=0) as srv:
        client = oai(srv)
        first = client.batches.retrieve(submit_openai(client, [chat_line("a", "x")]).id)
        second = client.batches.retrieve(submit_openai(client, [chat_line("a", "x")]).id)
        assert first.status == "completed"
        assert second.status == "failed" and second.failed_at is not None
        assert second.errors is not None and second.errors.data and second.errors.data[0].message
        assert srv.billed() == {("openai", "a"): 1}


def test_openai_create_rejects_bad_metadata_and_non_jsonl_upload() -> None:
    with SandboxServer(tick_seconds=0) as srv:
        client = oai(srv)
        f = client.files.create(file=("in.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="metadata"):
            client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={f"k{i}": "v" for i in range(17)},
            )
        with pytest.raises(openai.BadRequestError, match="512"):
            client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"k": "v" * 513}
            )
        with pytest.raises(openai.BadRequestError, match="jsonl"):
            client.files.create(file=("in.csv", b"a,b\n"), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_does_not_exist")
        assert srv.batches() == []


def test_limits_are_enforced_so_sharding_can_be_tested() -> None:
    with SandboxServer(tick_seconds=0, limits=Limits(openai_max_requests=2, anthropic_max_requests=2)) as srv:
        batch = oai(srv).batches.retrieve(submit_openai(oai(srv), [chat_line(f"r{i}", "x") for i in range(3)]).id)
        assert batch.status == "failed" and batch.errors and batch.errors.data
        assert batch.errors.data[0].code == "too_many_requests"
        with pytest.raises(anthropic.BadRequestError, match="at most 2"):
            ant(srv).messages.batches.create(requests=[anthropic_request(f"r{i}", "x") for i in range(3)])


# -- Anthropic lifecycle -----------------------------------------------------------------------
def test_anthropic_batch_lifecycle_with_every_result_type(clock: FakeClock) -> None:
    cids = ["ok-1", "ok-2", "bad", "server", "busy", "late", "stopped"]
    faults = Faults(
        request_errors={"bad": "invalid_request", "server": "server_error", "busy": "overloaded", "late": "expired", "stopped": "canceled"}
    )
    with SandboxServer(faults=faults, tick_seconds=1.0, clock=clock) as srv:
        client = ant(srv)
        batch = client.messages.batches.create(requests=[anthropic_request(c, f"prompt {c}") for c in cids])
        assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
        assert batch.results_url is None
        clock.advance()
        mid = client.messages.batches.retrieve(batch.id)
        # All counts but `processing` stay 0 until the batch has ended.
        assert mid.request_counts.model_dump() == {"processing": 7, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        assert mid.results_url is None
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(batch.id)
        clock.advance()
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.ended_at is not None
        assert ended.request_counts.model_dump() == {"processing": 0, "succeeded": 2, "errored": 3, "canceled": 1, "expired": 1}
        assert ended.results_url == f"{srv.anthropic_base_url}/v1/messages/batches/{batch.id}/results"

        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        assert set(results) == set(cids)
        ok = results["ok-1"]
        assert ok.type == "succeeded"
        assert ok.message.content[0].type == "text" and ok.message.content[0].text
        assert ok.message.usage.input_tokens > 0 and ok.message.usage.output_tokens > 0
        assert ok.message.stop_reason == "end_turn"
        assert {c: results[c].error.error.type for c in ("bad", "server", "busy")} == {
            "bad": "invalid_request_error",
            "server": "api_error",
            "busy": "overloaded_error",
        }
        assert results["late"].type == "expired" and results["stopped"].type == "canceled"
        assert srv.billed() == {("anthropic", "ok-1"): 1, ("anthropic", "ok-2"): 1}


def test_anthropic_invalid_params_become_errored_results_and_bad_custom_ids_are_refused() -> None:
    with SandboxServer(tick_seconds=0) as srv:
        client = ant(srv)
        for bad in ["has space", "x" * 65, ""]:
            with pytest.raises(anthropic.BadRequestError, match="custom_id"):
                client.messages.batches.create(requests=[anthropic_request(bad, "x")])
        with pytest.raises(anthropic.BadRequestError, match="duplicate"):
            client.messages.batches.create(requests=[anthropic_request("a", "x"), anthropic_request("a", "y")])
        batch = client.messages.batches.create(
            requests=[anthropic_request("good", "x"), {"custom_id": "no-max", "params": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}]
        )
        results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
        assert results["good"].type == "succeeded"
        assert results["no-max"].type == "errored"
        assert results["no-max"].error.error.type == "invalid_request_error"
        assert "max_tokens" in results["no-max"].error.error.message


# -- list, cancel ------------------------------------------------------------------------------
def test_list_pages_newest_first_for_both_providers() -> None:
    with SandboxServer(tick_seconds=0) as srv:
        oc, ac = oai(srv), ant(srv)
        o_ids = [submit_openai(oc, [chat_line("a", "x")], {"shard": str(i)}).id for i in range(5)]
        a_ids = [ac.messages.batches.create(requests=[anthropic_request("a", "x")]).id for _ in range(5)]

        page = oc.batches.list(limit=2)
        assert [b.id for b in page.data] == o_ids[::-1][:2] and page.has_more
        assert page.first_id == o_ids[4] and page.last_id == o_ids[3]
        nxt = oc.batches.list(limit=2, after=page.last_id)
        assert [b.id for b in nxt.data] == [o_ids[2], o_ids[1]]
        # Iterating a page follows the cursor through every page.
        assert [b.id for b in oc.batches.list(limit=2)] == o_ids[::-1]
        last = oc.batches.list(limit=2, after=o_ids[1])
        assert [b.id for b in last.data] == [o_ids[0]] and not last.has_more

        apage = ac.messages.batches.list(limit=2)
        assert [b.id for b in apage.data] == a_ids[::-1][:2] and apage.has_more
        assert apage.last_id == a_ids[3]
        assert [b.id for b in ac.messages.batches.list(limit=2)] == a_ids[::-1]
        before = ac.messages.batches.list(limit=2, before_id=a_ids[1])
        assert [b.id for b in before.data] == [a_ids[3], a_ids[2]]


def test_cancel_ends_batches_one_tick_later_without_billing_unrun_requests(clock: FakeClock) -> None:
    with SandboxServer(faults=Faults(cancel_finished_share=0.5), tick_seconds=1.0, clock=clock) as srv:
        oc, ac = oai(srv), ant(srv)
        o_val = submit_openai(oc, [chat_line(f"v{i}", "x") for i in range(4)])
        assert oc.batches.cancel(o_val.id).status == "cancelling"
        o_run = submit_openai(oc, [chat_line(f"p{i}", "x") for i in range(4)])
        a_run = ac.messages.batches.create(requests=[anthropic_request(f"q{i}", "x") for i in range(4)])
        clock.advance(1.5)
        assert oc.batches.cancel(o_run.id).status == "cancelling"
        canceling = ac.messages.batches.cancel(a_run.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
        clock.advance()

        cancelled = oc.batches.retrieve(o_val.id)
        assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
        assert cancelled.output_file_id is None
        assert {x["error"]["code"] for x in read_lines(oc, cancelled.error_file_id)} == {"batch_cancelled"}

        # Cancelled while in progress: the finished half was run (and billed), the rest was not.
        partial = oc.batches.retrieve(o_run.id)
        assert partial.status == "cancelled"
        assert len(read_lines(oc, partial.output_file_id)) == 2 and len(read_lines(oc, partial.error_file_id)) == 2
        ended = ac.messages.batches.retrieve(a_run.id)
        assert ended.processing_status == "ended"
        assert (ended.request_counts.succeeded, ended.request_counts.canceled) == (2, 2)
        assert sorted(r.result.type for r in ac.messages.batches.results(a_run.id)) == ["canceled", "canceled", "succeeded", "succeeded"]
        billed = srv.billed()
        assert sum(billed.values()) == 4 and not any(cid.startswith("v") for _, cid in billed)
        done = _completed_batch(oc, clock)
        # The real API answers 409 (ConflictError) to a cancel of a finished batch, not 400.
        with pytest.raises(openai.ConflictError, match="completed") as info:
            oc.batches.cancel(done.id)
        assert info.value.status_code == 409


def _completed_batch(client: openai.OpenAI, clock: FakeClock):
    batch = submit_openai(client, [chat_line("done", "x")])
    clock.advance(3)
    assert client.batches.retrieve(batch.id).status == "completed"
    return batch


# -- faults through the SDKs -------------------------------------------------------------------
def test_rate_limit_fault_raises_rate_limit_error_with_retry_after() -> None:
    faults = Faults(rate_limit_on=("openai.batches.list#1",), retry_after_seconds=2)
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        with pytest.raises(openai.RateLimitError) as info:
            oai(srv).batches.list()
        assert info.value.response.headers["retry-after"] == "2"
        assert oai(srv).batches.list().data == []  # only the first call was hit
        assert srv.stats()["faults_injected"] == {"rate_limit": 1}


def test_sdk_retries_through_rate_limits_and_server_errors() -> None:
    faults = Faults(rate_limit_on=("anthropic.batches.create#1",), server_error_on=("anthropic.batches.create#2",), retry_after_seconds=0.01)
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        batch = ant(srv, max_retries=2).messages.batches.create(requests=[anthropic_request("a", "x")])
        assert batch.processing_status in ("in_progress", "ended")
        assert srv.stats()["calls"]["anthropic.batches.create"] == 3
        assert len(srv.batches()) == 1


def test_server_error_fault_raises_internal_server_error() -> None:
    with SandboxServer(faults=Faults(server_error_on=("anthropic.batches.retrieve#1",)), tick_seconds=0) as srv:
        batch = ant(srv).messages.batches.create(requests=[anthropic_request("a", "x")])
        with pytest.raises(anthropic.InternalServerError):
            ant(srv).messages.batches.retrieve(batch.id)
        assert ant(srv).messages.batches.retrieve(batch.id).processing_status == "ended"


def test_share_based_faults_are_reproducible_from_the_seed() -> None:
    def outcomes(seed: int) -> list[str]:
        faults = Faults(seed=seed, rate_limit_share=0.3, server_error_share=0.2, http_fault_endpoints=("openai.batches.*",))
        with SandboxServer(faults=faults, tick_seconds=0) as srv:
            client = oai(srv)
            result = []
            for _ in range(30):
                try:
                    client.batches.list()
                    result.append("ok")
                except openai.RateLimitError:
                    result.append("429")
                except openai.InternalServerError:
                    result.append("500")
            return result

    first = outcomes(7)
    assert first == outcomes(7)
    assert {"ok", "429", "500"} <= set(first)
    assert first != outcomes(8)


def test_lost_create_response_leaves_the_batch_visible_in_list() -> None:
    with SandboxServer(faults=Faults(lose_create_on=("openai#1", "anthropic#1")), tick_seconds=0) as srv:
        client = oai(srv)
        with pytest.raises(openai.APIConnectionError):
            submit_openai(client, [chat_line("a", "x")], {"run_id": "job/2026-01-01", "shard": "strong-0000"})
        listed = client.batches.list().data
        assert len(listed) == 1 and listed[0].metadata == {"run_id": "job/2026-01-01", "shard": "strong-0000"}
        with pytest.raises(anthropic.APIConnectionError):
            ant(srv).messages.batches.create(requests=[anthropic_request("a", "x")])
        assert len(ant(srv).messages.batches.list().data) == 1
        assert [(b.provider, b.lost_response) for b in srv.batches()] == [("openai", True), ("anthropic", True)]
        assert srv.stats()["faults_injected"]["lose_create"] == 2


def test_sdk_retry_after_a_lost_create_response_creates_a_duplicate_batch() -> None:
    faults = Faults(lose_create_on=("openai#1",), lose_create_mode="server_error")
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        batch = submit_openai(oai(srv, max_retries=1), [chat_line("a", "x")], {"shard": "s0"})
        created = srv.batches()
        assert len(created) == 2 and all(b.metadata == {"shard": "s0"} for b in created)
        assert created[1].id == batch.id and created[0].lost_response
        # Both batches ran: the hazard the ledger must prevent is real here.
        assert srv.billed() == {("openai", "a"): 2}


def test_token_limit_exceeded_is_visible_in_batch_errors(clock: FakeClock) -> None:
    with SandboxServer(faults=Faults(token_limit_on=("openai#1",)), tick_seconds=1.0, clock=clock) as srv:
        client = oai(srv)
        batch = submit_openai(client, [chat_line("a", "x")])
        assert batch.status == "validating"  # create itself succeeds, as in the real API
        clock.advance()
        failed = client.batches.retrieve(batch.id)
        assert failed.status == "failed"
        assert failed.errors is not None and failed.errors.data is not None
        assert failed.errors.data[0].code == "token_limit_exceeded"
        assert srv.billed() == {}


def test_enqueued_token_limit_fails_batches_beyond_the_budget(clock: FakeClock) -> None:
    lines = [chat_line(f"r{i}", "one two three four five six seven eight nine ten") for i in range(10)]
    # 10 requests of ~20 prompt tokens: one batch fits under 300, two open ones do not.
    with SandboxServer(faults=Faults(enqueued_token_limit=300), tick_seconds=1.0, clock=clock) as srv:
        client = oai(srv)
        first = submit_openai(client, lines)
        second = submit_openai(client, lines)
        other_model = submit_openai(client, [dict(x, body=dict(x["body"], model="gpt-4o-mini")) for x in lines])
        clock.advance(3)
        third = submit_openai(client, lines)  # the first has completed: its tokens are no longer enqueued
        clock.advance(3)
        status = {k: client.batches.retrieve(b.id) for k, b in [("1", first), ("2", second), ("o", other_model), ("3", third)]}
        assert {k: b.status for k, b in status.items()} == {"1": "completed", "2": "failed", "o": "completed", "3": "completed"}
        assert status["2"].errors and status["2"].errors.data and status["2"].errors.data[0].code == "token_limit_exceeded"


def test_expired_batches_keep_their_finished_part(clock: FakeClock) -> None:
    faults = Faults(expire_on=("openai#1", "anthropic#1"), expire_finished_share=0.5)
    with SandboxServer(faults=faults, tick_seconds=1.0, clock=clock) as srv:
        oc, ac = oai(srv), ant(srv)
        ob = submit_openai(oc, [chat_line(f"r{i}", f"q{i}") for i in range(10)])
        ab = ac.messages.batches.create(requests=[anthropic_request(f"r{i}", f"q{i}") for i in range(10)])
        clock.advance()
        assert oc.batches.retrieve(ob.id).status == "in_progress"
        clock.advance()
        expired = oc.batches.retrieve(ob.id)
        assert expired.status == "expired" and expired.expired_at is not None
        assert expired.request_counts is not None
        assert (expired.request_counts.completed, expired.request_counts.failed) == (5, 5)
        done = read_lines(oc, expired.output_file_id)
        rest = read_lines(oc, expired.error_file_id)
        assert len(done) == 5 and all(x["response"]["status_code"] == 200 for x in done)
        assert len(rest) == 5 and all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in rest)

        ended = ac.messages.batches.retrieve(ab.id)
        assert (ended.request_counts.succeeded, ended.request_counts.expired) == (5, 5)
        types = [r.result.type for r in ac.messages.batches.results(ab.id)]
        assert sorted(types) == ["expired"] * 5 + ["succeeded"] * 5
        # The finished part of an expired batch is billed (once), the rest is not.
        billed = srv.billed()
        assert sum(v for (p, _), v in billed.items() if p == "openai") == 5
        assert {x["custom_id"] for x in done} == {cid for (p, cid) in billed if p == "openai"}
        assert max(billed.values()) == 1


def test_malformed_result_line_is_present_next_to_intact_lines() -> None:
    with SandboxServer(faults=Faults(malformed_line_on=("openai#1", "anthropic#1")), tick_seconds=0) as srv:
        oc, ac = oai(srv), ant(srv)
        batch = oc.batches.retrieve(submit_openai(oc, [chat_line(f"r{i}", "x") for i in range(4)]).id)
        raw = oc.files.content(batch.output_file_id).text.splitlines()
        parsed, broken = [], []
        for line in raw:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                broken.append(line)
        assert len(broken) == 1 and sorted(x["custom_id"] for x in parsed) == ["r0", "r1", "r2", "r3"]

        ab = ac.messages.batches.create(requests=[anthropic_request(f"r{i}", "x") for i in range(4)])
        with pytest.raises(json.JSONDecodeError):
            list(ac.messages.batches.results(ab.id))
        url = ac.messages.batches.retrieve(ab.id).results_url
        status, body = raw_get(url, {"x-api-key": KEY, "anthropic-version": "2023-06-01"})
        assert status == 200 and len(body.decode().splitlines()) == 5


def test_request_errors_clear_on_resubmission_so_nothing_is_billed_twice() -> None:
    with SandboxServer(faults=Faults(request_errors={"r1": "server_error"}), tick_seconds=0) as srv:
        client = oai(srv)
        first = client.batches.retrieve(submit_openai(client, [chat_line("r0", "x"), chat_line("r1", "y")]).id)
        assert [x["custom_id"] for x in read_lines(client, first.error_file_id)] == ["r1"]
        retry = client.batches.retrieve(submit_openai(client, [chat_line("r1", "y")]).id)
        assert [x["custom_id"] for x in read_lines(client, retry.output_file_id)] == ["r1"]
        assert srv.billed() == {("openai", "r0"): 1, ("openai", "r1"): 1}
        assert [r.batch_id for r in srv.billing() if r.custom_id == "r1"] == [retry.id]


def test_concurrent_clients_get_distinct_batches_each_billed_once() -> None:
    with SandboxServer(tick_seconds=0) as srv:
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                client = oai(srv)
                submit_openai(client, [chat_line(f"t{n}-{i}", "x") for i in range(3)])
                ant(srv).messages.batches.create(requests=[anthropic_request(f"t{n}", "x")])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len({b.id for b in srv.batches()}) == 12
        billed = srv.billed()
        assert len(billed) == 6 * 3 + 6 and set(billed.values()) == {1}


# -- auth and secrets --------------------------------------------------------------------------
def test_requests_without_an_api_key_get_401() -> None:
    with SandboxServer(tick_seconds=0) as srv:
        status, body = raw_get(f"{srv.openai_base_url}/batches")
        assert status == 401 and json.loads(body)["error"]["type"] == "invalid_request_error"
        status, body = raw_get(f"{srv.anthropic_base_url}/v1/messages/batches", {"anthropic-version": "2023-06-01"})
        assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
        status, _ = raw_get(f"{srv.openai_base_url}/batches", {"Authorization": "Bearer "})
        assert status == 401
        with pytest.raises(openai.AuthenticationError):
            oai(srv, default_headers={"Authorization": "Bearer"}).batches.list()
        assert srv.stats()["calls"] == {}  # refused before any endpoint ran


def test_the_api_key_is_never_logged_or_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SandboxServer(faults=Faults(rate_limit_on=("openai.batches.list#1",)), tick_seconds=0) as srv:
        client = oai(srv)
        with pytest.raises(openai.RateLimitError) as info:
            client.batches.list()
        submit_openai(client, [chat_line("a", "x")])
        ant(srv).messages.batches.create(requests=[anthropic_request("a", "x")])
        kept = repr((srv.batches(), srv.stats(), srv.billing(), vars(srv._store)))
    assert KEY not in caplog.text and KEY not in kept
    # ...but it is quoted back to the caller, as real providers can: the SDK's own error holds it.
    assert KEY in str(info.value)


def test_error_answers_and_per_request_errors_quote_the_callers_key_as_real_providers_do() -> None:
    faults = Faults(rejected_api_keys=("sk-wrong-0000",), request_errors={"bad": "invalid_request"})
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key provided: sk-wrong-0000"):
            oai(srv, api_key="sk-wrong-0000").batches.list()
        with pytest.raises(anthropic.AuthenticationError):
            ant(srv, api_key="sk-wrong-0000").messages.batches.list()
        client = oai(srv)
        batch = submit_openai(client, [chat_line("bad", "x"), chat_line("good", "y")])
        (line,) = read_lines(client, client.batches.retrieve(batch.id).error_file_id)
        assert KEY in line["response"]["body"]["error"]["message"]
        a = ant(srv).messages.batches.create(requests=[anthropic_request("bad", "x")])
        (result,) = ant(srv).messages.batches.results(a.id)
        assert KEY in result.result.error.error.message
        # Another caller downloading the same file sees its own key, never this one's.
        other = oai(srv, api_key="sk-other-caller-1111")
        (line,) = read_lines(other, client.batches.retrieve(batch.id).error_file_id)
        assert "sk-other-caller-1111" in line["response"]["body"]["error"]["message"] and KEY not in json.dumps(line)
        assert KEY not in repr(vars(srv._store))
    with SandboxServer(faults=Faults(echo_api_key=False, request_errors={"bad": "invalid_request"}), tick_seconds=0) as srv:
        batch = submit_openai(oai(srv), [chat_line("bad", "x")])
        (line,) = read_lines(oai(srv), oai(srv).batches.retrieve(batch.id).error_file_id)
        assert KEY not in json.dumps(line) and "{{" not in json.dumps(line)


# -- replay --------------------------------------------------------------------------------------
def _tiny_gsm8k_csv(tmp_path: Path) -> Path:
    import pandas as pd

    path = tmp_path / "gsm8k_like.csv"
    pd.DataFrame(
        {
            "prompt": ["Tom has 3 apples and buys 2 more. How many apples?", "What is 10 divided by 4?"],
            "weak/model": [True, False],
            "gpt-4-1106-preview": [True, True],
            "weak/model_response": ["3 + 2 = 5\n#### 5", "10 / 4 = 2\n#### 2"],
            "gpt-4-1106-preview_response": ["Tom has 3 + 2 = 5 apples.\n#### 5", "10 / 4 = 2.5\n#### 2.5"],
        }
    ).to_csv(path, index=False)
    return path


def test_replay_responder_returns_the_recorded_answer_and_errors_on_unknown_prompts(tmp_path: Path) -> None:
    responder = ReplayResponder.from_gsm8k_csv(
        _tiny_gsm8k_csv(tmp_path), model_aliases={"gpt-4.1": "gpt-4-1106-preview", "claude-haiku-4-5": "weak/model"}
    )
    with SandboxServer(responder=responder, tick_seconds=0) as srv:
        oc = oai(srv)
        lines = [chat_line("known", "What is 10 divided by 4?"), chat_line("unknown", "Not in the table")]
        batch = oc.batches.retrieve(submit_openai(oc, lines).id)
        (ok,) = read_lines(oc, batch.output_file_id)
        assert ok["response"]["body"]["choices"][0]["message"]["content"] == "10 / 4 = 2.5\n#### 2.5"
        (bad,) = read_lines(oc, batch.error_file_id)
        assert bad["response"]["status_code"] == 400
        assert "not in the replay table" in bad["response"]["body"]["error"]["message"]

        ab = ant(srv).messages.batches.create(
            requests=[
                anthropic_request("weak", "Tom has 3 apples and buys 2 more. How many apples?"),
                anthropic_request("nomodel", "What is 10 divided by 4?", model="claude-opus-4-5"),
            ]
        )
        results = {r.custom_id: r.result for r in ant(srv).messages.batches.results(ab.id)}
        assert results["weak"].message.content[0].text == "3 + 2 = 5\n#### 5"
        assert results["nomodel"].type == "errored" and "claude-opus-4-5" in results["nomodel"].error.error.message


def test_replay_reads_long_tables_and_names_missing_columns(tmp_path: Path) -> None:
    import pandas as pd

    long = tmp_path / "answers.parquet"
    pd.DataFrame({"prompt": ["p"], "model": ["m"], "response": ["r"]}).to_parquet(long)
    assert ReplayResponder.load(long).respond(ChatRequest("openai", "m", (("user", "p"),))).text == "r"
    assert ReplayResponder.load(_tiny_gsm8k_csv(tmp_path)).models == {"weak/model", "gpt-4-1106-preview"}
    with pytest.raises(ValueError, match="response"):
        ReplayResponder(pd.DataFrame({"prompt": ["p"], "model": ["m"]}))
    with pytest.raises(ValueError, match="not in the table"):
        ReplayResponder.load(long, model_aliases={"gpt-4.1": "nope"})


def test_replay_of_the_shipped_gsm8k_file_returns_the_recorded_answers_of_both_models() -> None:
    import pandas as pd

    rows = pd.read_csv(GSM8K_CSV).head(20)
    weak = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    responder = ReplayResponder.from_gsm8k_csv(
        GSM8K_CSV, model_aliases={"gpt-4.1": "gpt-4-1106-preview", "claude-haiku-4-5": weak}
    )
    with SandboxServer(responder=responder, tick_seconds=0) as srv:
        oc = oai(srv)
        batch = oc.batches.retrieve(submit_openai(oc, [chat_line(f"g{i}", p) for i, p in enumerate(rows["prompt"])]).id)
        got = {x["custom_id"]: x["response"]["body"]["choices"][0]["message"]["content"] for x in read_lines(oc, batch.output_file_id)}
        assert got == {f"g{i}": r for i, r in enumerate(rows["gpt-4-1106-preview_response"])}

        ab = ant(srv).messages.batches.create(
            requests=[anthropic_request(f"w{i}", p, max_tokens=4000) for i, p in enumerate(rows["prompt"])]
        )
        answers = {r.custom_id: r.result.message.content[0].text for r in ant(srv).messages.batches.results(ab.id)}
        assert answers == {f"w{i}": r for i, r in enumerate(rows[f"{weak}_response"])}


# -- persistence across restarts ------------------------------------------------------------------
def _provider_view(srv: SandboxServer) -> dict[str, object]:
    """Everything a client can see, read through the SDKs, plus the billing."""
    oc, ac = oai(srv), ant(srv)
    view: dict[str, object] = {"billing": srv.billing(), "billed": srv.billed()}
    for b in oc.batches.list(limit=100):
        d = b.model_dump()
        view[b.id] = d
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            if d[key] is not None:
                view[d[key]] = oc.files.content(d[key]).content
    for b in ac.messages.batches.list(limit=100):
        view[b.id] = b.model_dump()
        if b.results_url:  # a new server has a new port
            view[b.id]["results_url"] = b.results_url.removeprefix(srv.anthropic_base_url)
        if b.processing_status == "ended":
            view[b.id + "/results"] = [r.model_dump() for r in ac.messages.batches.results(b.id)]
    return view


def test_a_restarted_server_on_the_same_state_dir_is_the_same_provider(tmp_path: Path) -> None:
    state = tmp_path / "state"
    clock = FakeClock()
    faults = Faults(expire_on=("openai#3",), request_errors={"o0-r1": "server_error"})
    with SandboxServer(faults=faults, tick_seconds=1.0, clock=clock, state_dir=state) as srv:
        oc, ac = oai(srv), ant(srv)
        done = submit_openai(oc, [chat_line(f"o0-r{i}", f"q{i}") for i in range(6)], {"shard": "s0"})
        a_done = ac.messages.batches.create(requests=[anthropic_request(f"a0-r{i}", f"q{i}") for i in range(4)])
        clock.advance(3)
        running = submit_openai(oc, [chat_line(f"o1-r{i}", f"q{i}") for i in range(5)], {"shard": "s1"})
        a_running = ac.messages.batches.create(requests=[anthropic_request(f"a1-r{i}", f"q{i}") for i in range(3)])
        stray = oc.files.create(file=("stray.jsonl", jsonl([chat_line("x", "x")])), purpose="batch")
        oc.files.delete(stray.id)
        clock.advance()
        assert oc.batches.retrieve(done.id).status == "completed"
        assert oc.batches.retrieve(running.id).status == "in_progress"
        before = _provider_view(srv)
        billed_before = srv.billed()
    assert set(billed_before) == {("openai", f"o0-r{i}") for i in (0, 2, 3, 4, 5)} | {("anthropic", f"a0-r{i}") for i in range(4)}

    # Another process's clock reads something else entirely: the saved timeline carries on from it.
    later = FakeClock()
    later.t = 987_654.0
    with SandboxServer(faults=faults, tick_seconds=1.0, clock=later, state_dir=state) as srv:
        oc, ac = oai(srv), ant(srv)
        assert _provider_view(srv) == before  # same ids, states, timestamps, files, results; nothing billed again
        with pytest.raises(openai.NotFoundError):
            oc.files.retrieve(stray.id)
        assert [b.seq for b in srv.batches()] == [1, 1, 2, 2]
        third = submit_openai(oc, [chat_line("o2-r0", "q")])  # the 3rd OpenAI batch: the expire_on rule fires
        later.advance(2)
        assert oc.batches.retrieve(running.id).status == "completed"
        assert ac.messages.batches.retrieve(a_running.id).processing_status == "ended"
        assert oc.batches.retrieve(third.id).status == "expired"
        assert srv.batches()[-1].seq == 3
        after_all = _provider_view(srv)
        billed = srv.billed()
    assert set(billed) - set(billed_before) == {("openai", f"o1-r{i}") for i in range(5)} | {("anthropic", f"a1-r{i}") for i in range(3)}
    assert set(billed.values()) == {1}

    # A third start: every batch has ended, and still nothing is billed twice.
    with SandboxServer(tick_seconds=1.0, clock=FakeClock(), state_dir=state) as srv:
        assert _provider_view(srv) == after_all
        assert srv.billed() == billed and srv.stats()["batches_created"] == {"openai": 3, "anthropic": 2}


def test_with_the_real_clock_batches_keep_running_while_the_server_is_down(tmp_path: Path) -> None:
    with SandboxServer(tick_seconds=0.25, state_dir=tmp_path) as srv:
        batch = ant(srv).messages.batches.create(requests=[anthropic_request("a", "x")])
        assert batch.processing_status == "in_progress"
    # Longer than the 2 ticks an Anthropic batch takes: it ends while no server runs, as at a real
    # provider (without counting the downtime it would still be in progress at the next look).
    time.sleep(0.6)
    with SandboxServer(tick_seconds=0.25, state_dir=tmp_path) as srv:
        assert ant(srv).messages.batches.retrieve(batch.id).processing_status == "ended"
        assert srv.billed() == {("anthropic", "a"): 1}


def test_a_state_dir_that_cannot_be_loaded_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(StateError, match="state.json"):
        SandboxServer(state_dir=tmp_path)
    with SandboxServer(tick_seconds=0, state_dir=tmp_path / "ok") as srv:
        submit_openai(oai(srv), [chat_line("a", "x")])
    (input_file,) = (tmp_path / "ok" / "files").iterdir()
    input_file.unlink()
    with pytest.raises(StateError, match=input_file.name):
        SandboxServer(state_dir=tmp_path / "ok")


def test_results_are_rendered_without_holding_the_lock(clock: FakeClock) -> None:
    with SandboxServer(tick_seconds=1.0, clock=clock) as srv:
        oc = oai(srv)
        batch = submit_openai(oc, [chat_line(f"r{i}", "x") for i in range(3)])
        rendering, release = threading.Event(), threading.Event()
        render = srv._store.renderers["openai"]

        def slow_render(b):  # stands in for a 50k-line batch
            rendering.set()
            assert release.wait(10)
            return render(b)

        srv._store.renderers["openai"] = slow_render
        clock.advance(3)
        result: list[str] = []
        first = threading.Thread(target=lambda: result.append(oc.batches.retrieve(batch.id).status))
        first.start()
        try:
            assert rendering.wait(10)
            # Other calls go on meanwhile; the batch shows its last status until its files exist.
            assert ant(srv).messages.batches.list().data == []
            pending = oc.batches.retrieve(batch.id)
            assert pending.status == "finalizing" and pending.output_file_id is None
        finally:
            release.set()
            first.join(10)
        assert result == ["completed"]
        assert len(read_lines(oc, oc.batches.retrieve(batch.id).output_file_id)) == 3
        assert srv.billed() == {("openai", f"r{i}"): 1 for i in range(3)}


# -- config, CLI, imports ------------------------------------------------------------------------
def test_faults_load_from_yaml_and_name_bad_settings(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text("seed: 3\nrate_limit_share: 0.1\nlose_create_on: ['openai#1']\nrequest_errors: {r1: overloaded}\n")
    faults = Faults.from_yaml(path)
    assert faults.seed == 3 and faults.lose_create_on == ("openai#1",) and faults.request_errors == {"r1": "overloaded"}
    assert Faults.from_dict(faults.to_dict()) == faults
    with pytest.raises(ValueError, match="rate_limt_share"):
        Faults.from_dict({"rate_limt_share": 0.1})
    with pytest.raises(ValueError, match="expire_on"):
        Faults(expire_on=("openai#0",))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Faults(rate_limit_share=1.5)
    with pytest.raises(ValueError, match="unknown kind"):
        Faults(request_errors={"a": "teapot"})  # type: ignore[dict-item]


def test_sandbox_settings_validate_faults_and_build_a_server(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from routellm_batch.config import SandboxSettings

    with pytest.raises(ValidationError, match="unknown fault setting"):
        SandboxSettings(faults={"nope": 1})
    with pytest.raises(ValidationError, match="replay_uri"):
        SandboxSettings(responder="replay")
    settings = SandboxSettings(
        enabled=True,
        responder="replay",
        replay_uri=str(_tiny_gsm8k_csv(tmp_path)),
        replay_model_aliases={"*": "gpt-4-1106-preview"},
        tick_seconds=0,
        faults={"expire_on": ["openai#1"]},
        state_dir=str(tmp_path / "state"),
    )
    with SandboxServer.from_settings(settings) as srv:
        assert srv.faults.expire_on == ("openai#1",)
        assert srv.state_dir == tmp_path / "state" and (tmp_path / "state" / "state.json").exists()
        batch = oai(srv).batches.retrieve(submit_openai(oai(srv), [chat_line("a", "What is 10 divided by 4?", model="any")]).id)
        assert batch.status == "expired"


def test_sandbox_modules_import_without_heavy_dependencies() -> None:
    code = (
        "import sys; import routellm_batch.sandbox.server, routellm_batch.sandbox.cli; "
        "heavy = {'pyspark', 'torch', 'transformers', 'great_expectations', 'pandas', 'pyarrow'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_serve_prints_base_urls_and_stops_on_sigterm(tmp_path: Path) -> None:
    faults = tmp_path / "faults.yaml"
    faults.write_text("rate_limit_on: ['openai.batches.list#1']\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "routellm_batch.cli", "sandbox", "serve", "--port", "0", "--tick-seconds", "0", "--faults", str(faults)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        urls = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        client = openai.OpenAI(base_url=urls["OPENAI_BASE_URL"], api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.batches.list()
        assert client.batches.list().data == []
        assert urls["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_with_a_state_dir_keeps_batches_through_a_kill(tmp_path: Path) -> None:
    def serve() -> tuple[subprocess.Popen[str], openai.OpenAI]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "routellm_batch.cli", "sandbox", "serve", "--tick-seconds", "0", "--state-dir", str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        urls = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        return proc, openai.OpenAI(base_url=urls["OPENAI_BASE_URL"], api_key=KEY, max_retries=0)

    proc, client = serve()
    try:
        batch = client.batches.retrieve(submit_openai(client, [chat_line("a", "x"), chat_line("b", "y")]).id)
        output = client.files.content(batch.output_file_id).content
        proc.kill()  # SIGKILL: no shutdown code runs; every change was already saved
        proc.wait()
        proc, client = serve()
        assert [b.id for b in client.batches.list()] == [batch.id]
        assert client.batches.retrieve(batch.id).status == "completed"
        assert client.files.content(batch.output_file_id).content == output
    finally:
        proc.kill()
        proc.wait()


def test_cli_refuses_replay_without_a_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", "sandbox", "serve", "--responder", "replay"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--replay-csv" in result.stderr


def test_stopped_server_releases_its_port() -> None:
    srv = SandboxServer(tick_seconds=0).start()
    port = srv.port
    oai(srv).batches.list()  # leaves a keep-alive connection open
    srv.stop()
    with SandboxServer(tick_seconds=0, port=port) as again:
        assert again.port == port


def test_list_lag_hides_a_new_batch_from_list_but_not_from_retrieve(clock: FakeClock) -> None:
    faults = Faults(list_lag_seconds=2.0, list_lag_on=("*#1",))
    with SandboxServer(faults=faults, tick_seconds=10.0, clock=clock) as srv:
        oc, ac = oai(srv), ant(srv)
        lagging = submit_openai(oc, [chat_line("a", "x")])
        other = ac.messages.batches.create(requests=[anthropic_request("b", "x")])  # not a lagging one
        assert [b.id for b in oc.batches.list().data] == [] and oc.batches.retrieve(lagging.id).id == lagging.id
        assert [b.id for b in ac.messages.batches.list().data] == [other.id]
        clock.advance(2.0)
        assert [b.id for b in oc.batches.list().data] == [lagging.id]
