"""Providers: the status/error vocabularies, rendering, result parsing, custom ids, sharding,
retries and the SDK boundary (real SDKs against the sandbox on 127.0.0.1)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, get_args

import pytest
import tenacity

from routellm_batch.config import BatchSettings, ModelSpec
from routellm_batch.providers.anthropic import (
    ANTHROPIC_ERROR_TYPES,
    ANTHROPIC_PROCESSING_STATUSES,
    ANTHROPIC_RESULT_TYPES,
    AnthropicBatchProvider,
)
from routellm_batch.providers.base import BatchLimits, BatchRequest, MalformedResultLine, ResultStatus, ShardPayload
from routellm_batch.providers.custom_id import is_valid_custom_id, make_custom_id
from routellm_batch.providers.errors import (
    CredentialsError,
    ErrorType,
    ProviderError,
    QuotaExhaustedError,
    StopRunError,
    TerminalProviderError,
    TransientProviderError,
    from_sdk_exception,
    parse_retry_after,
)
from routellm_batch.providers.openai import OPENAI_ERROR_CODES, OPENAI_STATUSES, OpenAIBatchProvider
from routellm_batch.providers.registry import PROVIDERS, build_provider
from routellm_batch.providers.retry import RetryPolicy, _WaitRetryAfterOrBackoff, call_with_retries
from routellm_batch.providers.sharding import PackedRequest, ShardLimits, ShardPacker, shard_id
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.server import SandboxServer

KEY_ENV = "ROUTELLM_TEST_PROVIDER_KEY"
FAKE_KEY = "sk-test-LEAKCHECK-7f3a9c2e5b1d4e8f"
FAST = RetryPolicy(attempts=4, initial_wait=0.001, max_wait=0.01)


def spec(provider: str, base_url: str | None = None, **kw: Any) -> ModelSpec:
    model = "gpt-4.1" if provider == "openai" else "claude-haiku-4-5"
    return ModelSpec(provider=provider, model=model, base_url=base_url, api_key_env=KEY_ENV, max_tokens=50, **kw)


# -- vocabularies: every provider word maps to one of ours ----------------------------------------------


def test_every_openai_batch_status_maps_to_a_neutral_state() -> None:
    from openai.types import Batch

    assert set(get_args(Batch.model_fields["status"].annotation)) == set(OPENAI_STATUSES)
    terminal = {s for s, state in OPENAI_STATUSES.items() if state.terminal}
    assert terminal == {"completed", "failed", "expired", "cancelled"}


def test_every_anthropic_status_result_type_and_error_type_maps() -> None:
    from anthropic.types.messages import MessageBatch
    from anthropic.types.messages.message_batch_result import MessageBatchResult
    from anthropic.types.shared.error_type import ErrorType as AnthropicErrorType

    assert set(get_args(MessageBatch.model_fields["processing_status"].annotation)) == set(ANTHROPIC_PROCESSING_STATUSES)
    result_types = {get_args(cls.model_fields["type"].annotation)[0] for cls in get_args(get_args(MessageBatchResult)[0])}
    assert result_types == set(ANTHROPIC_RESULT_TYPES)
    assert set(get_args(AnthropicErrorType)) <= set(ANTHROPIC_ERROR_TYPES)


def test_every_error_type_says_what_to_do_next() -> None:
    retry = {e for e in ErrorType if e.retryable}
    final = set(ErrorType) - retry
    assert {ErrorType.SERVER_ERROR, ErrorType.OVERLOADED, ErrorType.BATCH_EXPIRED, ErrorType.BATCH_CANCELLED,
            ErrorType.TOKEN_LIMIT_EXCEEDED, ErrorType.RATE_LIMITED, ErrorType.MALFORMED_RESULT} <= retry  # fmt: skip
    assert {ErrorType.INVALID_REQUEST, ErrorType.BATCH_VALIDATION_FAILED, ErrorType.REQUEST_TOO_LARGE,
            ErrorType.MALFORMED_BILLED_RESULT, ErrorType.AUTHENTICATION} <= final  # fmt: skip
    # Every provider word lands on one of ours; the sandbox's request error kinds all appear.
    assert set(OPENAI_ERROR_CODES.values()) | set(ANTHROPIC_ERROR_TYPES.values()) <= set(ErrorType)


def test_registry_builds_each_provider_without_a_client() -> None:
    assert set(PROVIDERS) == {"openai", "anthropic"}
    for name, cls in (("openai", OpenAIBatchProvider), ("anthropic", AnthropicBatchProvider)):
        p = build_provider(spec(name))
        assert isinstance(p, cls) and p._clients == {}


def test_limits_are_declared_and_config_can_only_lower_them() -> None:
    assert OpenAIBatchProvider.limits == BatchLimits(50_000, 200_000_000)
    assert AnthropicBatchProvider.limits == BatchLimits(100_000, 256_000_000)
    assert OpenAIBatchProvider.limits.capped(BatchSettings(max_requests=10, max_bytes=10**12)) == BatchLimits(10, 200_000_000)
    # "200 MB" / "256 MB" read as 10^6-byte megabytes, the stricter reading; the sandbox enforces the same caps.
    from routellm_batch.sandbox.store import Limits

    assert (Limits().openai_max_file_bytes, Limits().anthropic_max_bytes) == (200_000_000, 256_000_000)
    lim = ShardLimits.for_provider(AnthropicBatchProvider.limits, BatchSettings(max_bytes=1000, enqueued_token_budget=99))
    assert (lim.max_requests, lim.max_bytes, lim.max_tokens) == (100_000, 1000, 99)


# -- light imports and lazy clients ------------------------------------------------------------------


def test_light_modules_import_neither_heavy_stacks_nor_the_sdks() -> None:
    code = (
        "import sys\n"
        "import routellm_batch.providers.openai, routellm_batch.providers.anthropic, routellm_batch.providers.registry\n"
        "import routellm_batch.ledger, routellm_batch.stages.submit, routellm_batch.stages.wait, routellm_batch.stages.collect\n"
        "print([m for m in ('pyspark','torch','transformers','great_expectations','openai','anthropic') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_key_variable_is_named_and_clients_are_built_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = build_provider(spec("anthropic"))  # no key needed to build
    with pytest.raises(CredentialsError, match=f"environment variable {KEY_ENV} is not set"):
        p.client()
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    for name in ("openai", "anthropic"):
        p = build_provider(spec(name, "http://127.0.0.1:9"))
        client = p.client()
        assert client.max_retries == 0  # our tenacity policy decides; the SDK never re-POSTs a create
        assert p.client() is client
        p.close()


# -- rendering ----------------------------------------------------------------------------------------


def test_openai_render_puts_system_first_and_merges_the_template() -> None:
    p = OpenAIBatchProvider(spec("openai", request_template={"temperature": 0.2}))
    body = p.render_body({"prompt": "Hi", "system": "Be kind", "max_tokens": None})
    assert body == {
        "temperature": 0.2,
        "model": "gpt-4.1",
        "messages": [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 50,
    }
    body = p.render_body({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "max_tokens": 7})
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] and body["max_completion_tokens"] == 7
    line = p.serialize_request(BatchRequest("cid-1", body))
    assert line.endswith(b"\n") and json.loads(line) == {"custom_id": "cid-1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    assert p.parse_request_line(line).body == body


def test_anthropic_render_moves_system_messages_into_the_system_parameter() -> None:
    p = AnthropicBatchProvider(spec("anthropic"))
    body = p.render_body(
        {"messages": [{"role": "system", "content": "S1"}, {"role": "user", "content": "Q"}], "system": "S0", "max_tokens": 9}
    )
    assert body == {"model": "claude-haiku-4-5", "max_tokens": 9, "messages": [{"role": "user", "content": "Q"}], "system": "S0\n\nS1"}
    line = p.serialize_request(BatchRequest("c", body))
    assert json.loads(line) == {"custom_id": "c", "params": body}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": None, "messages": None}, "prompt/messages"),
        ({"prompt": "  "}, "prompt/messages"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\]"),
    ],
)
def test_rows_that_cannot_be_rendered_name_the_field(provider: str, row: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_provider(spec(provider)).render_body(row)


# -- result lines ---------------------------------------------------------------------------------------


def _openai_ok(cid: str) -> bytes:
    body = {"choices": [{"message": {"content": "42"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    return json.dumps({"id": "r", "custom_id": cid, "response": {"status_code": 200, "body": body}, "error": None}).encode()


def test_openai_result_lines_of_both_error_shapes_parse() -> None:
    p = OpenAIBatchProvider(spec("openai"))
    ok = p.parse_result_line(_openai_ok("a"))
    assert (ok.status, ok.text, ok.finish_reason, ok.input_tokens, ok.output_tokens) == (ResultStatus.SUCCEEDED, "42", "stop", 5, 2)
    http = {"custom_id": "b", "response": {"status_code": 400, "body": {"error": {"type": "invalid_request_error", "message": "bad"}}}, "error": None}
    r = p.parse_result_line(json.dumps(http).encode())
    assert (r.status, r.error_type, r.retryable) == (ResultStatus.ERRORED, ErrorType.INVALID_REQUEST, False)
    assert "bad" in r.error_message
    for code, status, etype in (
        ("batch_expired", ResultStatus.EXPIRED, ErrorType.BATCH_EXPIRED),
        ("batch_cancelled", ResultStatus.CANCELED, ErrorType.BATCH_CANCELLED),
    ):
        r = p.parse_result_line(json.dumps({"custom_id": "c", "response": None, "error": {"code": code, "message": "m"}}).encode())
        assert (r.status, r.error_type, r.retryable) == (status, etype, True)
    r = p.parse_result_line(json.dumps({"custom_id": "d", "response": {"status_code": 503, "body": {"error": {"code": "engine_overloaded"}}}}).encode())
    assert r.error_type is ErrorType.OVERLOADED
    with pytest.raises(MalformedResultLine) as exc:
        p.parse_result_line(_openai_ok("e")[:40])
    assert exc.value.custom_id is None
    with pytest.raises(MalformedResultLine) as exc:
        p.parse_result_line(json.dumps({"custom_id": "f", "response": {"status_code": 200, "body": {}}}).encode())
    assert exc.value.custom_id == "f"
    assert p.line_may_be_billed("output", b"{") and not p.line_may_be_billed("errors", b"{")


def test_anthropic_result_lines_of_every_type_parse() -> None:
    p = AnthropicBatchProvider(spec("anthropic"))
    msg = {"content": [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}], "stop_reason": "end_turn", "usage": {"input_tokens": 3, "output_tokens": 1}}
    r = p.parse_result_line(json.dumps({"custom_id": "a", "result": {"type": "succeeded", "message": msg}}).encode())
    assert (r.status, r.text, r.finish_reason, r.input_tokens, r.output_tokens) == (ResultStatus.SUCCEEDED, "42", "end_turn", 3, 1)
    for word, etype in ANTHROPIC_ERROR_TYPES.items():
        line = {"custom_id": "b", "result": {"type": "errored", "error": {"type": "error", "error": {"type": word, "message": "x"}}}}
        r = p.parse_result_line(json.dumps(line).encode())
        assert (r.status, r.error_type) == (ResultStatus.ERRORED, etype)
    for kind, status in (("expired", ResultStatus.EXPIRED), ("canceled", ResultStatus.CANCELED)):
        r = p.parse_result_line(json.dumps({"custom_id": "c", "result": {"type": kind}}).encode())
        assert r.status is status and r.retryable
    with pytest.raises(MalformedResultLine):
        p.parse_result_line(b'{"custom_id": "d", "result": {"type": "weird"}}')
    assert p.line_may_be_billed("results", b'{"custom_id":"x","result":{"type":"succeeded","mes')
    assert not p.line_may_be_billed("results", b'{"custom_id":"x","result":{"type":"errored","err')
    assert p.line_may_be_billed("results", b'{"custom_id":"x","res')  # unsure -> treated as billed


# -- custom ids -----------------------------------------------------------------------------------------

WEIRD_IDS = ["日本語/質問", "a/b", "x" * 200, "x" * 199 + "y", "same id", "same_id", "same-id", "same\tid", "", "🚀", "\x00", "a\nb"]


def test_custom_ids_are_valid_deterministic_and_distinct_for_weird_prompt_ids() -> None:
    run = "job/2026-03-01"
    ids = [make_custom_id(run, pid, 1) for pid in WEIRD_IDS]
    assert all(is_valid_custom_id(c) and len(c) <= 64 for c in ids)
    assert len(set(ids)) == len(ids)
    assert ids == [make_custom_id(run, pid, 1) for pid in WEIRD_IDS]
    assert make_custom_id(run, "p", 1) != make_custom_id(run, "p", 2) != make_custom_id("job/2026-03-02", "p", 2)
    assert make_custom_id(run, "plain-id_1", 1).startswith("plain-id_1-")
    assert not is_valid_custom_id("a\n") and not is_valid_custom_id("x" * 65) and not is_valid_custom_id("")


# -- sharding ---------------------------------------------------------------------------------------------


class _Sink:
    def __init__(self, index: int) -> None:
        self.index, self.items = index, []

    def add(self, item: PackedRequest) -> None:
        self.items.append(item)

    def close(self) -> list[PackedRequest]:
        return self.items


def _items(n: int, size: int = 10, tokens: int = 5) -> list[PackedRequest]:
    return [PackedRequest(f"p{i}", f"c{i}", b"x" * (size - 1) + b"\n", tokens) for i in range(n)]


@pytest.mark.parametrize(
    ("limits", "sizes"),
    [
        (ShardLimits(max_requests=4, max_bytes=10**6, max_tokens=None), [4, 4, 2]),
        (ShardLimits(max_requests=100, max_bytes=35, max_tokens=None), [3, 3, 3, 1]),
        (ShardLimits(max_requests=100, max_bytes=10**6, max_tokens=12), [2, 2, 2, 2, 2]),
    ],
    ids=["requests", "bytes", "tokens"],
)
def test_packer_closes_shards_before_any_limit_is_passed(limits: ShardLimits, sizes: list[int]) -> None:
    packer = ShardPacker(limits, _Sink)
    items = _items(10)
    for it in items:
        packer.add(it)
    shards = packer.finish()
    assert [len(s) for s in shards] == sizes
    assert [it for s in shards for it in s] == items  # order kept, nothing lost or doubled


def test_packer_gives_an_over_budget_request_a_shard_of_its_own_and_refuses_oversized_bytes() -> None:
    packer = ShardPacker(ShardLimits(100, 50, 10), _Sink)
    small, big = _items(2, tokens=4), PackedRequest("big", "cb", b"y\n", 30)
    for it in (small[0], big, small[1]):
        packer.add(it)
    assert [[i.prompt_id for i in s] for s in packer.finish()] == [["p0"], ["big"], ["p1"]]
    huge = PackedRequest("huge", "ch", b"z" * 60, 1)
    assert not packer.fits_alone(huge)
    with pytest.raises(ValueError, match="prompt_id='huge'"):
        packer.add(huge)


def test_shard_ids_are_deterministic_per_run_queue_attempt_and_index() -> None:
    a = shard_id("job/2026-03-01", "strong", 1, 3)
    assert a == shard_id("job/2026-03-01", "strong", 1, 3) and a.startswith("strong-a1-00003-")
    assert len({a, shard_id("job/2026-03-02", "strong", 1, 3), shard_id("job/2026-03-01", "weak", 1, 3),
                shard_id("job/2026-03-01", "strong", 2, 3)}) == 4  # fmt: skip


# -- retries and the SDK boundary ------------------------------------------------------------------


def test_retry_honours_retry_after_and_stops_after_the_bound() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientProviderError("429", error_type=ErrorType.RATE_LIMITED, retry_after=0.0)
        return "ok"

    assert call_with_retries(flaky, policy=FAST, what="t") == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(TransientProviderError):
        call_with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(TransientProviderError("x")), policy=FAST, what="t")
    assert len(calls) == FAST.attempts
    calls.clear()
    with pytest.raises(TerminalProviderError):
        call_with_retries(lambda: calls.append(1) or (_ for _ in ()).throw(TerminalProviderError("x")), policy=FAST, what="t")
    assert len(calls) == 1

    wait = _WaitRetryAfterOrBackoff(RetryPolicy(initial_wait=1.0, max_wait=8.0))
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 3
    state.set_exception((TransientProviderError, TransientProviderError("x", retry_after=5.0), None))
    assert wait(state) == 5.0
    state.set_exception((TransientProviderError, TransientProviderError("x", retry_after=500.0), None))
    assert wait(state) == 8.0
    state.set_exception((TransientProviderError, TransientProviderError("x"), None))
    assert 0.0 <= wait(state) <= 4.0  # full jitter under the exponential bound


def test_retry_after_headers_in_every_form() -> None:
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    future = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= parse_retry_after({"retry-after": future}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after(None) is None


def test_sdk_messages_lose_the_key_at_the_boundary() -> None:
    class FakeStatusError(Exception):
        status_code = 401
        body = {"error": {"message": f"Incorrect API key provided: {FAKE_KEY}", "type": "invalid_request_error"}}

    err = from_sdk_exception(FakeStatusError(f"Error code: 401 {FAKE_KEY}"), provider="openai", operation="x", secrets=[FAKE_KEY])
    assert isinstance(err, CredentialsError) and FAKE_KEY not in str(err) and "[redacted]" in str(err)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_http_failures_through_the_real_sdk_map_to_our_classes(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    faults = Faults(rate_limit_on=(f"{provider}.batches.retrieve#1-2",), server_error_on=(f"{provider}.batches.list#1",))
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        url = srv.openai_base_url if provider == "openai" else srv.anthropic_base_url
        p = build_provider(spec(provider, url), retry=RetryPolicy(attempts=1))
        with pytest.raises(TransientProviderError) as exc:
            p.retrieve("batch_x")
        assert (exc.value.status_code, exc.value.error_type, exc.value.retry_after) == (429, ErrorType.RATE_LIMITED, 0.05)
        with pytest.raises(TransientProviderError) as exc:
            list(p.list_batches(datetime(2000, 1, 1, tzinfo=timezone.utc)))
        assert exc.value.status_code == 500 and exc.value.may_have_acted
        p.retry = FAST
        with pytest.raises(TerminalProviderError) as exc:  # the 2nd 429 is retried, then a 404
            p.retrieve("no_such_batch")
        assert exc.value.status_code == 404 and not isinstance(exc.value, TransientProviderError)
        assert FAKE_KEY not in str(exc.value)
    # Nothing listening: a connection error, which may have acted (a create must be reconciled).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = build_provider(spec(provider, f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")), retry=RetryPolicy(attempts=1))
    with pytest.raises(TransientProviderError) as exc:
        p.retrieve("b")
    assert exc.value.may_have_acted and isinstance(exc.value, ProviderError)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_list_batches_follows_every_page_and_stops_at_older_batches(provider: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with SandboxServer(tick_seconds=0) as srv:
        url = srv.openai_base_url if provider == "openai" else srv.anthropic_base_url
        p = build_provider(spec(provider, url), retry=FAST)
        p.list_page_size = 2
        line = p.serialize_request(BatchRequest("c1", p.render_body({"prompt": "hi"})))
        (tmp_path / "in.jsonl").write_bytes(line)
        created = []
        for i in range(5):
            payload = ShardPayload(f"s{i}", "r", 1, 1, len(line), lambda: open(tmp_path / "in.jsonl", "rb"))
            created.append(p.create(payload, input_file_id=p.upload_input(payload), metadata={"shard_id": f"s{i}"}).batch_id)
        listed = [b.batch_id for b in p.list_batches(datetime(2000, 1, 1, tzinfo=timezone.utc))]
        assert sorted(listed) == sorted(created)
        calls = srv.stats()["calls"][f"{provider}.batches.list"]
        assert calls == 3  # 2 + 2 + 1
        if provider == "openai":
            assert {b.metadata["shard_id"] for b in p.list_batches(datetime(2000, 1, 1, tzinfo=timezone.utc))} == {f"s{i}" for i in range(5)}
        future = datetime.now(timezone.utc) + timedelta(hours=1)
        assert list(p.list_batches(future)) == []


# -- every HTTP status and error word the SDKs can raise lands on one of ours ---------------------------

_STATUSES = (400, 401, 402, 403, 404, 405, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529)


def _sdk_status_error(provider: str, status: int, body: dict, headers: dict | None = None) -> Exception:
    """The exception the real SDK raises for this answer (built by the SDK's own factory)."""
    import anthropic
    import httpx2
    import openai

    request = httpx2.Request("POST", "http://127.0.0.1/v1/batches")
    response = httpx2.Response(status, request=request, headers=headers or {}, json=body)
    client = openai.OpenAI(api_key=FAKE_KEY) if provider == "openai" else anthropic.Anthropic(api_key=FAKE_KEY)
    return client._make_status_error(f"Error code: {status} - {body}", body=body, response=response)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status", _STATUSES)
def test_every_sdk_status_error_maps_to_one_of_our_classes(provider: str, status: int) -> None:
    body = {"error": {"message": f"something went wrong for {FAKE_KEY}", "type": "x"}}
    err = from_sdk_exception(_sdk_status_error(provider, status, body), provider=provider, operation="op", secrets=[FAKE_KEY])
    assert err.error_type is not ErrorType.UNKNOWN and err.status_code == status
    assert FAKE_KEY not in str(err) and "[redacted]" in str(err)
    if status in (401, 402, 403):
        assert isinstance(err, StopRunError)  # credentials / billing: the run stops at once
    elif status == 409:  # a conflict with the resource's state: the same call fails alike
        assert isinstance(err, TerminalProviderError) and err.error_type is ErrorType.CONFLICT
    elif err.error_type.retryable:
        assert isinstance(err, TransientProviderError) and status in (408, 429, 500, 502, 503, 504, 529)
    else:
        assert isinstance(err, TerminalProviderError) and not isinstance(err, (TransientProviderError, StopRunError))


def test_every_error_word_the_sandbox_sends_is_known_to_its_provider() -> None:
    from routellm_batch.sandbox.server import _ERROR_TYPES

    for openai_word, anthropic_word in _ERROR_TYPES.values():
        assert openai_word in OPENAI_ERROR_CODES, openai_word
        assert anthropic_word in ANTHROPIC_ERROR_TYPES, anthropic_word


@pytest.mark.parametrize(
    ("provider", "status", "error"),
    [
        ("openai", 429, {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}),
        ("anthropic", 429, {"type": "rate_limit_error", "message": "monthly spend cap", "details": {"error_code": "enforced_spend_limit_reached"}}),
        ("anthropic", 400, {"type": "invalid_request_error", "message": "You have reached your specified API usage limits. You will regain access on 2026-04-01."}),
        ("anthropic", 402, {"type": "billing_error", "message": "Your credit balance is too low"}),
    ],
)
def test_quota_and_spend_limit_answers_stop_the_run_instead_of_being_retried(provider: str, status: int, error: dict) -> None:
    body = {"error": error} if provider == "openai" else {"type": "error", "error": error}
    err = from_sdk_exception(_sdk_status_error(provider, status, body), provider=provider, operation="batches.create")
    assert isinstance(err, QuotaExhaustedError) and err.error_type is ErrorType.BILLING
    assert "quota or spend limit is used up" in str(err) and "retrying cannot help" in str(err)
    if status == 402:
        return
    # An ordinary 429 / 400 is still what it was.
    plain = {"type": "rate_limit_error", "message": "slow down"} if status == 429 else {"type": "invalid_request_error", "message": "bad"}
    body = {"error": plain} if provider == "openai" else {"type": "error", "error": plain}
    assert not isinstance(from_sdk_exception(_sdk_status_error(provider, status, body), provider=provider, operation="x"), StopRunError)


@pytest.mark.parametrize(
    ("provider", "shape"), [("openai", "spend_cap"), ("anthropic", "spend_cap"), ("anthropic", "spend_limit"), ("anthropic", "credit")]
)
def test_a_used_up_quota_from_the_sandbox_stops_at_the_first_answer(provider: str, shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    faults = Faults(quota_exceeded_on=(f"{provider}.batches.list",), anthropic_quota_shape=shape)
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        url = srv.openai_base_url if provider == "openai" else srv.anthropic_base_url
        p = build_provider(spec(provider, url), retry=FAST)
        with pytest.raises(QuotaExhaustedError) as exc:
            list(p.list_batches(datetime(2000, 1, 1, tzinfo=timezone.utc)))
        assert srv.stats()["calls"][f"{provider}.batches.list"] == 1  # not retried
        assert FAKE_KEY not in str(exc.value)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_overloaded_answers_are_retried_after_the_providers_retry_after(
    provider: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    faults = Faults(overloaded_on=(f"{provider}.batches.list#1-2",), retry_after_seconds=0.03)
    with SandboxServer(faults=faults, tick_seconds=0) as srv:
        url = srv.openai_base_url if provider == "openai" else srv.anthropic_base_url
        p = build_provider(spec(provider, url), retry=RetryPolicy(attempts=1))
        with pytest.raises(TransientProviderError) as exc:
            list(p.list_batches(datetime(2000, 1, 1, tzinfo=timezone.utc)))
        assert exc.value.error_type is ErrorType.OVERLOADED and exc.value.retry_after == 0.03
        assert exc.value.status_code == (529 if provider == "anthropic" else 503)
        p.retry = RetryPolicy(attempts=3, initial_wait=5.0, max_wait=10.0)  # a backoff this long would show
        with caplog.at_level(logging.WARNING, logger="routellm_batch.providers.retry"):
            assert list(p.list_batches(datetime(2000, 1, 1, tzinfo=timezone.utc))) == []
        waits = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "retrying in" in r.getMessage()]
        assert waits == ["0.03s"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cancelling_a_batch_that_already_ended_reads_it_again(
    provider: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenAI answers 409 to a cancel of a completed batch: we read the batch and carry on."""
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with SandboxServer(tick_seconds=0) as srv:
        url = srv.openai_base_url if provider == "openai" else srv.anthropic_base_url
        p = build_provider(spec(provider, url), retry=FAST)
        line = p.serialize_request(BatchRequest("c1", p.render_body({"prompt": "hi"})))
        (tmp_path / "in.jsonl").write_bytes(line)
        payload = ShardPayload("s0", "r", 1, 1, len(line), lambda: open(tmp_path / "in.jsonl", "rb"))
        created = p.create(payload, input_file_id=p.upload_input(payload), metadata={})
        assert p.retrieve(created.batch_id).state.terminal
        with caplog.at_level(logging.INFO, logger="routellm_batch.providers.base"):
            info = p.cancel(created.batch_id)
        assert info.batch_id == created.batch_id and info.state.value == "completed"
        assert srv.stats()["calls"][f"{provider}.batches.cancel"] == 1  # a 409 is not retried
        if provider == "openai":  # Anthropic answers a cancel of an ended batch with the batch itself
            (line,) = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
            assert line.startswith(f"openai: batch {created.batch_id} had already ended when it was cancelled (openai batches.cancel: HTTP 409")
            assert line.endswith("); reading it again")
