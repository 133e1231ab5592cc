"""Edge cases found by mutation testing (mutmut, see [tool.mutmut] in pyproject.toml) of the key
redaction and error mapping (providers/errors.py, providers/base.py) and of the money code: each
test pins a behaviour a surviving mutant changed without any other test noticing."""

from __future__ import annotations

from typing import Any

import pytest

from routellm_batch.config import ModelSpec
from routellm_batch.providers.errors import (
    REDACTED,
    CredentialsError,
    ErrorType,
    ProviderError,
    TerminalProviderError,
    TransientProviderError,
    _body_message,
    from_sdk_exception,
    parse_retry_after,
    redact,
)
from routellm_batch.providers.registry import build_provider

KEY = "sk-mutant-KEY-0123456789abcdef"


# -- redact ------------------------------------------------------------------------------------------


def test_redact_replaces_every_occurrence_of_every_secret_of_four_chars_or_more() -> None:
    assert redact(f"a {KEY} b {KEY}", [KEY]) == f"a {REDACTED} b {REDACTED}"
    assert redact("x abcd y wxyz", [None, "", "abcd", "wxyz"]) == f"x {REDACTED} y {REDACTED}"
    assert redact("abc abcd", ["abc"]) == "abc abcd"  # too short to be a key: replacing it would mangle text
    assert redact("no secret here", [KEY]) == "no secret here"


# -- the SDK boundary ----------------------------------------------------------------------------------


class _Response:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


class _StatusError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None, message: str | None = None) -> None:
        super().__init__(message or f"Error code: {status}")
        self.status_code = status
        self.body = body
        self.message = message
        self.response = _Response(headers or {})


def _map(exc: BaseException) -> ProviderError:
    return from_sdk_exception(exc, provider="openai", operation="batches.create", secrets=[KEY])


def test_a_status_error_names_provider_operation_status_and_the_redacted_provider_text() -> None:
    err = _map(_StatusError(400, {"error": {"message": f"bad key {KEY}", "type": "invalid_request_error"}}))
    assert str(err) == err.message == f"openai batches.create: HTTP 400: invalid_request_error: bad key {REDACTED}"
    assert type(err) is TerminalProviderError and err.status_code == 400 and err.error_type is ErrorType.INVALID_REQUEST
    assert not err.may_have_acted and err.retry_after is None


def test_provider_text_is_cut_to_500_chars_after_redaction() -> None:
    err = _map(_StatusError(400, {"error": {"message": KEY + "x" * 2000}}))
    assert str(err) == f"openai batches.create: HTTP 400: {REDACTED}" + "x" * (500 - len(REDACTED))


def test_without_a_body_message_the_sdk_message_is_used_and_without_either_none() -> None:
    assert str(_map(_StatusError(404, None, message=f"gone {KEY}"))) == f"openai batches.create: HTTP 404: gone {REDACTED}"
    assert str(_map(_StatusError(404, "not json"))) == "openai batches.create: HTTP 404"


def test_body_messages_of_both_shapes_with_or_without_a_type() -> None:
    assert _body_message({"message": "m", "type": "t"}) == "t: m"  # OpenAI's SDK keeps the inner object
    assert _body_message({"type": "error", "error": {"message": "m", "type": "t"}}) == "t: m"  # Anthropic's the whole body
    assert _body_message({"error": {"message": "m", "code": "c"}}) == "c: m"
    assert _body_message({"error": {"message": "m"}}) == "m"
    assert _body_message({"error": {"type": "t"}}) is None and _body_message(None) is None
    assert _body_message({"error": "text"}) is None


def test_server_errors_may_have_acted_rate_limits_did_not_and_retry_after_is_kept() -> None:
    err = _map(_StatusError(500, {"error": {"message": "boom"}}))
    assert type(err) is TransientProviderError and err.may_have_acted and err.error_type is ErrorType.SERVER_ERROR
    err = _map(_StatusError(429, {"error": {"message": "slow", "type": "requests"}}, {"retry-after-ms": "1500"}))
    assert type(err) is TransientProviderError and not err.may_have_acted and err.retry_after == 1.5
    err = _map(_StatusError(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, {"retry-after": "7"}))
    assert err.error_type is ErrorType.OVERLOADED and err.retry_after == 7.0 and err.status_code == 529


def test_credentials_errors_are_credentials_errors_with_their_type() -> None:
    assert _map(_StatusError(401, {"error": {"message": "no"}})).error_type is ErrorType.AUTHENTICATION
    err = _map(_StatusError(403, {"error": {"message": "no"}}))
    assert isinstance(err, CredentialsError) and err.error_type is ErrorType.PERMISSION and err.status_code == 403


def test_spend_limit_wording_counts_only_on_a_400_and_only_at_the_start() -> None:
    limit = {"type": "error", "error": {"type": "invalid_request_error", "message": "You have reached your specified API usage limits."}}
    assert _map(_StatusError(400, limit)).error_type is ErrorType.BILLING
    assert _map(_StatusError(404, limit)).error_type is ErrorType.INVALID_REQUEST
    later = {"error": {"type": "invalid_request_error", "message": "Note: You have reached your specified limits"}}
    assert _map(_StatusError(400, later)).error_type is ErrorType.INVALID_REQUEST
    details_not_a_mapping = {"error": {"type": "rate_limit_error", "message": "slow", "details": "enforced_spend_limit_reached"}}
    assert _map(_StatusError(429, details_not_a_mapping)).error_type is ErrorType.RATE_LIMITED


class APITimeoutError(Exception):
    pass


class APIConnectionError(Exception):
    pass


def test_timeouts_connection_failures_and_unknown_errors_keep_no_key() -> None:
    err = _map(APITimeoutError(f"timed out {KEY}"))
    assert str(err) == "openai batches.create: request timed out" and err.may_have_acted and err.error_type is ErrorType.TIMEOUT
    err = _map(APIConnectionError(f"refused {KEY} " + "y" * 1000))
    assert str(err) == f"openai batches.create: connection error (refused {REDACTED} " + "y" * (300 - len(f"refused {REDACTED} ")) + ")"
    assert type(err) is TransientProviderError and err.may_have_acted and err.error_type is ErrorType.SERVER_ERROR
    err = _map(ValueError(f"odd {KEY} " + "z" * 1000))
    assert str(err) == f"openai batches.create: ValueError: odd {REDACTED} " + "z" * (500 - len(f"ValueError: odd {REDACTED} "))
    assert type(err) is ProviderError and err.may_have_acted and err.error_type is ErrorType.UNKNOWN


def test_retry_after_clamps_negatives_and_prefers_milliseconds() -> None:
    assert parse_retry_after({"retry-after-ms": "-5", "retry-after": "9"}) == 0.0
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412480.0 + 10) == 0.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412480.0 - 4) == 4.0
    assert parse_retry_after({}) is None and parse_retry_after({"other": "1"}) is None


# -- result streams: the key removed even when a chunk boundary splits it ------------------------------


def _provider(name: str, key: str = KEY) -> Any:
    model = "gpt-4.1" if name == "openai" else "claude-haiku-4-5"
    p = build_provider(ModelSpec(provider=name, model=model, api_key_env="UNUSED_IN_THIS_TEST"))
    p._key = key
    return p


@pytest.mark.parametrize("cut", [0, 1, 5, len(KEY) - 1, len(KEY)])
def test_result_chunks_lose_the_key_wherever_a_chunk_boundary_falls(cut: int) -> None:
    data = f'{{"message": "bad request made with {KEY}"}}\n{KEY}'.encode()
    at = data.index(KEY.encode()) + cut
    out = list(_provider("openai")._guarded("op", iter([data[:at], data[at:]])))
    assert b"".join(out) == data.replace(KEY.encode(), REDACTED.encode())
    assert all(out)  # no empty chunks handed on


def test_result_chunks_pass_unchanged_when_there_is_no_usable_key() -> None:
    data = [b"abc", b"def", b"ghi"]
    assert list(_provider("anthropic", key="ab")._guarded("op", iter(data))) == data  # too short to redact
    p = _provider("anthropic")
    p._key = None
    assert list(p._guarded("op", iter(data))) == data


def test_a_download_broken_midway_is_a_transient_error_without_the_key() -> None:
    def chunks() -> Any:
        yield b"first"
        raise APIConnectionError(f"peer reset, key {KEY}")

    gen = _provider("openai")._guarded("files.content(f1)", chunks())
    with pytest.raises(TransientProviderError) as exc:
        list(gen)
    assert KEY not in str(exc.value) and "openai files.content(f1): connection error" in str(exc.value)


def test_error_lines_of_both_providers_lose_the_key() -> None:
    oa = _provider("openai").parse_result_line(
        ('{"custom_id": "c", "response": {"status_code": 400, "body": {"error": {"message": "key %s", "type": "invalid_request_error"}}}}' % KEY).encode()
    )
    assert oa.error_message == f"HTTP 400 invalid_request_error: key {REDACTED}"
    an = _provider("anthropic").parse_result_line(
        ('{"custom_id": "c", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "key %s"}}}}' % KEY).encode()
    )
    assert an.error_message == f"api_error: key {REDACTED}"


# -- round 2: what the first round of mutants still got past -----------------------------------------

_STATUS_TYPES = {
    400: ErrorType.INVALID_REQUEST, 404: ErrorType.INVALID_REQUEST, 405: ErrorType.INVALID_REQUEST,
    413: ErrorType.INVALID_REQUEST, 415: ErrorType.INVALID_REQUEST, 422: ErrorType.INVALID_REQUEST,
    401: ErrorType.AUTHENTICATION, 402: ErrorType.BILLING, 403: ErrorType.PERMISSION, 408: ErrorType.TIMEOUT,
    504: ErrorType.TIMEOUT, 409: ErrorType.CONFLICT, 429: ErrorType.RATE_LIMITED, 503: ErrorType.OVERLOADED,
    529: ErrorType.OVERLOADED, 500: ErrorType.SERVER_ERROR, 502: ErrorType.SERVER_ERROR, 505: ErrorType.SERVER_ERROR,
    416: ErrorType.UNKNOWN, 302: ErrorType.UNKNOWN, None: ErrorType.UNKNOWN,
}  # fmt: skip


def test_each_http_status_has_its_exact_type() -> None:
    from routellm_batch.providers.errors import classify_http_status

    assert {s: classify_http_status(s) for s in _STATUS_TYPES} == _STATUS_TYPES


@pytest.mark.parametrize("field", ["type", "code"])
def test_insufficient_quota_is_recognised_from_the_type_or_the_code_alone(field: str) -> None:
    err = _map(_StatusError(429, {field: "insufficient_quota", "message": "You exceeded your current quota"}))
    assert err.error_type is ErrorType.BILLING
    assert str(err).endswith("; the account's quota or spend limit is used up and retrying cannot help: raise the limit, then re-run")


@pytest.mark.parametrize("name", ["APITimeoutError", "TimeoutException", "TimeoutError", "ReadTimeout"])
def test_every_timeout_class_name_is_a_timeout(name: str) -> None:
    err = _map(type(name, (Exception,), {})("slow"))
    assert err.error_type is ErrorType.TIMEOUT and isinstance(err, TransientProviderError)


@pytest.mark.parametrize("name", ["APIConnectionError", "ConnectError", "RemoteProtocolError", "ConnectionError", "OSError"])
def test_every_connection_class_name_is_a_connection_error(name: str) -> None:
    err = _map(type(name, (Exception,), {})("reset"))
    assert str(err) == "openai batches.create: connection error (reset)" and isinstance(err, TransientProviderError)


def test_a_status_error_without_body_or_message_attributes_still_maps() -> None:
    class Bare(Exception):
        status_code = 418

    err = _map(Bare())
    assert str(err) == "openai batches.create: HTTP 418" and err.error_type is ErrorType.UNKNOWN


def test_sdk_failures_name_the_provider_and_the_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _provider("anthropic")
    with pytest.raises(TransientProviderError, match=r"^anthropic messages\.batches\.list: connection error \(x\)$"):
        p._call("messages.batches.list", lambda: (_ for _ in ()).throw(APIConnectionError("x")))
    p.retry = type(p.retry)(attempts=1)
    with pytest.raises(TransientProviderError, match=r"^anthropic op-x: connection error"):
        p._retrying("op-x", lambda: (_ for _ in ()).throw(APIConnectionError("x")))


def test_a_missing_key_variable_is_an_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNUSED_IN_THIS_TEST", raising=False)
    p = build_provider(ModelSpec(provider="openai", model="gpt-4.1", api_key_env="UNUSED_IN_THIS_TEST"))
    with pytest.raises(CredentialsError) as exc:
        p.api_key()
    assert exc.value.error_type is ErrorType.AUTHENTICATION and "UNUSED_IN_THIS_TEST" in str(exc.value)


def test_a_key_given_at_construction_is_used_and_clients_are_built_sync_or_async(monkeypatch: pytest.MonkeyPatch) -> None:
    import anthropic

    spec = ModelSpec(provider="anthropic", model="claude-haiku-4-5", api_key_env="UNUSED_IN_THIS_TEST")
    monkeypatch.delenv("UNUSED_IN_THIS_TEST", raising=False)
    p = build_provider(spec, api_key=KEY, timeout_s=7.0, create_timeout_s=3.0)
    assert p.api_key() == KEY and p.timeout_s == 7.0 and p.create_timeout_s(10**9) == 3.0
    assert isinstance(p.client(asynchronous=True), anthropic.AsyncAnthropic)
    sync = p.client()
    assert isinstance(sync, anthropic.Anthropic) and sync.timeout == 7.0
    closed: list[bool] = []
    monkeypatch.setattr(sync, "close", lambda: closed.append(True))
    p.close()
    assert closed == [True] and False not in p._clients and True in p._clients  # the async one is the loop's to close
    assert build_provider(spec).timeout_s == 120.0
    with pytest.raises(ValueError, match="AnthropicBatchProvider serves provider 'anthropic', the spec says 'openai'"):
        type(p)(ModelSpec(provider="openai", model="gpt-4.1", api_key_env="X"))


def test_create_timeout_grows_with_the_payload_by_a_second_per_mb_up_to_900s() -> None:
    p = _provider("anthropic")
    assert p.create_timeout_s(0) == 30.0 and p.create_timeout_s(5_000_000) == 35.0
    assert p.create_timeout_s(10**12) == 900.0 and p.create_timeout_s(869_000_000) == 899.0


def test_malformed_result_line_keeps_its_message_and_custom_id() -> None:
    from routellm_batch.providers.base import MalformedResultLine

    err = MalformedResultLine("not JSON", "c1")
    assert str(err) == "not JSON" and err.custom_id == "c1"


def test_a_key_of_exactly_four_chars_is_removed_from_streams_and_a_short_first_chunk_is_held() -> None:
    assert b"".join(_provider("openai", key="abcd")._guarded("op", iter([b"x abcd XXXX"]))) == b"x [redacted] XXXX"
    assert b"".join(_provider("openai", key="abc")._guarded("op", iter([b"x abc XXXX"]))) == b"x abc XXXX"
    data = (KEY + " tail").encode()
    assert b"".join(_provider("openai")._guarded("op", iter([data[:1], data[1:]]))) == b"[redacted] tail"


# -- money: pricing.py and the cost arithmetic of the report ---------------------------------------------

from decimal import Decimal  # noqa: E402

from routellm_batch.providers.pricing import ModelPrice, PriceTable, TokenUsage, UnknownModelError  # noqa: E402

_FULL = ModelPrice("full", Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"), Decimal(6), version="t")
_NO_CACHE = ModelPrice("plain", Decimal(2), Decimal(8), version="t")
_NO_1H = ModelPrice("no1h", Decimal(2), Decimal(8), Decimal("0.5"), Decimal("2.5"), None, version="t")
_USAGE = TokenUsage(input_tokens=1_000_000, output_tokens=100_000, cached_input_tokens=200_000,
                    cache_write_5m_tokens=300_000, cache_write_1h_tokens=100_000)  # fmt: skip


def test_plain_token_counts_cost_input_and_output_at_their_rates_output_defaulting_to_none() -> None:
    assert _NO_CACHE.cost(1_000_000) == Decimal(2)
    assert _NO_CACHE.cost(1_000_000, 500_000, Decimal("0.5")) == Decimal(3)
    table = PriceTable("t", {"plain": _NO_CACHE})
    assert table.cost("plain", 500_000) == Decimal(1) and table.cost("plain", 0, 1_000_000, discount=Decimal("0.5")) == Decimal(4)


def test_every_kind_of_token_is_priced_at_its_own_rate() -> None:
    # 400k uncached x 3 + 100k out x 15 + 200k cached x 0.3 + 300k 5m writes x 3.75 + 100k 1h writes x 6, per million
    assert _FULL.cost(_USAGE) == Decimal("1.2") + Decimal("1.5") + Decimal("0.06") + Decimal("1.125") + Decimal("0.6")


def test_a_kind_of_token_without_a_price_is_refused_when_billed_and_free_when_absent() -> None:
    assert _NO_CACHE.cost(TokenUsage(input_tokens=10, output_tokens=1)) == Decimal("0.000028")
    for usage in (TokenUsage(10, 0, cached_input_tokens=1), TokenUsage(10, 0, cache_write_5m_tokens=1), TokenUsage(10, 0, cache_write_1h_tokens=1)):
        with pytest.raises(UnknownModelError, match="model 'plain' has no"):
            _NO_CACHE.cost(usage)


def test_impossible_usage_is_refused_naming_the_model() -> None:
    with pytest.raises(ValueError, match="^full: token counts must be >= 0"):
        _FULL.cost(TokenUsage(-1, 0))


def test_baselines_price_a_kind_this_model_has_no_price_for_as_plain_input() -> None:
    # Every price: same as cost.
    assert _FULL.baseline_cost(_USAGE) == _FULL.cost(_USAGE)
    # No cache prices at all: every input token is plain input.
    assert _NO_CACHE.baseline_cost(_USAGE) == Decimal(2) + Decimal("0.8")
    # Cached price but no 1h write price: writes count as plain input, cached tokens stay cached.
    assert _NO_1H.baseline_cost(_USAGE, Decimal("0.5")) == (Decimal("1.6") + Decimal("0.8") + Decimal("0.1")) / 2
    only_1h = ModelPrice("only1h", Decimal(2), Decimal(8), Decimal("0.5"), None, Decimal(4), version="t")
    assert only_1h.baseline_cost(_USAGE) == Decimal("1.6") + Decimal("0.8") + Decimal("0.1")
    no_cached = ModelPrice("nocached", Decimal(2), Decimal(8), None, Decimal("2.5"), Decimal(4), version="t")
    assert no_cached.baseline_cost(_USAGE) == Decimal("1.2") + Decimal("0.8") + Decimal("0.75") + Decimal("0.4")


def test_without_cache_writes_zeroes_both_write_counts_only() -> None:
    assert _USAGE.without_cache_writes() == TokenUsage(1_000_000, 100_000, 200_000, 0, 0)


def test_require_asks_an_unknown_provider_for_input_and_output_prices_only() -> None:
    table = PriceTable("t", {"plain": _NO_CACHE})
    assert table.require("plain", "some-vendor") is _NO_CACHE
    with pytest.raises(UnknownModelError, match=r"has no 'cached_input' price .*; openai bills cache reads \(OpenAI cached_tokens, Anthropic cache_read_input_tokens\) separately"):
        table.require("plain", "openai")
    with pytest.raises(UnknownModelError, match="known models: a, plain"):
        PriceTable("t", {"plain": _NO_CACHE, "a": _FULL}).price("zzz")


def test_the_cost_rows_savings_are_online_baseline_minus_cost_and_the_total_row_sums_them(tmp_path: Any) -> None:
    from test_cost_report import RUN_DATE, config, responses

    from routellm_batch.stages import report

    cfg = config(tmp_path)
    rows = report.cost_rows(cfg, RUN_DATE, responses(cfg, [
        {"model": "gpt-4.1", "queue": "strong", "input_tokens": 1_000_000, "output_tokens": 0},
        {"model": "claude-haiku-4-5", "queue": "weak", "input_tokens": 1_000_000, "output_tokens": 0},
    ]))  # fmt: skip
    for r in rows:
        assert r["savings_usd"] == r["baseline_online_usd"] - r["cost_usd"]
    total = rows[-1]
    assert (total["model"], total["provider"], total["queue"]) == ("all", "all", "all")
    # gpt-4.1 $2 online, $1 batch; haiku $1 online, $0.5 batch; the all-strong online baseline is $4.
    assert (total["cost_usd"], total["baseline_online_usd"], total["savings_usd"]) == (Decimal("1.5"), Decimal(4), Decimal("2.5"))
    empty = report.cost_rows(cfg, RUN_DATE, responses(cfg, []))
    assert len(empty) == 1 and all(isinstance(empty[0][k], Decimal) for k in ("cost_usd", "savings_usd"))
