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
