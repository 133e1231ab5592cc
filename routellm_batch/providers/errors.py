"""Errors classified by what to do next: one boundary maps the SDKs' exceptions onto ours.

Two vocabularies live here:
- `ErrorType`: the neutral type of a failed request or batch (what the responses table's
  `error_type` column holds), each with its next step (`retryable`).
- `ProviderError` and its subclasses: a failed API *call*, raised by a provider. Each carries
  whether the call may have taken effect on the server (`may_have_acted`), which decides if a
  non-idempotent call (batch create) can be retried as it is or must be reconciled first.

Every message that crosses this boundary has the API key removed (`redact`); SDK exceptions
are never re-raised with their own text.

Light module: imports neither SDK (duck typing on status codes and class names).
"""

from __future__ import annotations

import email.utils
import enum
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CredentialsError",
    "ErrorType",
    "ProviderError",
    "QuotaExhaustedError",
    "StopRunError",
    "TerminalProviderError",
    "TransientProviderError",
    "classify_http_status",
    "from_sdk_exception",
    "parse_retry_after",
    "redact",
]

REDACTED = "[redacted]"


class ErrorType(str, enum.Enum):
    """Why a request (or its whole batch) did not succeed, in one vocabulary for all providers."""

    INVALID_REQUEST = "invalid_request"
    """The request itself is wrong (400/404/422 line, invalid_request_error): fix input, no retry."""
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    BILLING = "billing"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CONFLICT = "conflict"
    BATCH_EXPIRED = "batch_expired"
    """The 24 h window ended before this request ran (billed nothing): resubmit."""
    BATCH_CANCELLED = "batch_cancelled"
    TOKEN_LIMIT_EXCEEDED = "token_limit_exceeded"
    """The whole batch failed: too many enqueued prompt tokens for the model. Resubmit later/smaller."""
    BATCH_VALIDATION_FAILED = "batch_validation_failed"
    """The whole batch failed validation (bad input file): the provider's reason is in the message."""
    REQUEST_TOO_LARGE = "request_too_large"
    """One serialized request is larger than a whole batch may be: it can never be sent."""
    MALFORMED_RESULT = "malformed_result"
    """The result line could not be parsed, and it was not a billed answer: resubmit."""
    MALFORMED_BILLED_RESULT = "malformed_billed_result"
    """The result line could not be parsed and may be a billed answer: NOT resubmitted (that could
    pay twice); the raw line is kept in the ledger's results/ folder."""
    MISSING_RESULT = "missing_result"
    """The batch ended without a (parseable) result line for this request."""
    UNPARSABLE = "unparsable"
    """The answer came (and was billed) but is not JSON or breaks the declared output: retried only
    when the config's `output.on_unparsable` says so (RequestResult.retry), never by default."""
    UNKNOWN = "unknown"

    @property
    def retryable(self) -> bool:
        """True: resubmitting the same request as it is may succeed (bounded by max_attempts)."""
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {
        ErrorType.RATE_LIMITED,
        ErrorType.SERVER_ERROR,
        ErrorType.OVERLOADED,
        ErrorType.TIMEOUT,
        ErrorType.CONFLICT,
        ErrorType.BATCH_EXPIRED,
        ErrorType.BATCH_CANCELLED,
        ErrorType.TOKEN_LIMIT_EXCEEDED,
        ErrorType.MALFORMED_RESULT,
        ErrorType.MISSING_RESULT,
        # Unknown errors are retried (bounded): failed requests are not billed, so a retry costs nothing.
        ErrorType.UNKNOWN,
    }
)


def classify_http_status(status: int | None) -> ErrorType:
    """The neutral type of an HTTP status, for API calls and for per-request result lines."""
    if status is None:
        return ErrorType.UNKNOWN
    if status in (400, 404, 405, 413, 415, 422):
        return ErrorType.INVALID_REQUEST
    if status == 401:
        return ErrorType.AUTHENTICATION
    if status == 402:
        return ErrorType.BILLING
    if status == 403:
        return ErrorType.PERMISSION
    if status in (408, 504):
        return ErrorType.TIMEOUT
    if status == 409:
        return ErrorType.CONFLICT
    if status == 429:
        return ErrorType.RATE_LIMITED
    if status in (503, 529):
        return ErrorType.OVERLOADED
    if status >= 500:
        return ErrorType.SERVER_ERROR
    return ErrorType.UNKNOWN


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret value replaced; secrets shorter than 4 chars are left alone."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


class ProviderError(Exception):
    """A failed provider API call. The message is safe to log (no key, no request body)."""

    def __init__(
        self,
        message: str,
        *,
        error_type: ErrorType = ErrorType.UNKNOWN,
        status_code: int | None = None,
        retry_after: float | None = None,
        may_have_acted: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status_code = status_code
        self.retry_after = retry_after
        self.may_have_acted = may_have_acted
        """True when the server may have carried out the call (a lost answer, a 5xx): a create
        must then be reconciled against the provider's batch list before it is tried again."""


class TransientProviderError(ProviderError):
    """429, 5xx, connection errors, timeouts: the same call may succeed later."""


class TerminalProviderError(ProviderError):
    """The provider refused the call for a reason a retry will not change (400, 404, 409, 422...)."""


class StopRunError(TerminalProviderError):
    """A systemic failure no retry can fix (every later call would fail alike): the run stops at once."""


class CredentialsError(StopRunError):
    """The API key is missing, wrong or lacks permission."""


class QuotaExhaustedError(StopRunError):
    """The account's quota, credit or spend limit is used up (OpenAI 429 `insufficient_quota`,
    Anthropic 402 `billing_error`, 429 `enforced_spend_limit_reached`, 400 "You have reached your
    specified ... API usage limits"): retrying only fails again until someone raises the limit."""


# How the providers say "quota / spend limit used up" (docs/provider-batch-apis.md).
_QUOTA_WORDS = frozenset({"insufficient_quota", "billing_error", "enforced_spend_limit_reached"})
_SPEND_LIMIT_PREFIX = "You have reached your specified"


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_object(body: Any) -> Mapping[str, Any]:
    """The `error` object of an SDK error body (OpenAI's SDK keeps only it, Anthropic's the whole body)."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            return err
    return {}


def _is_quota_exhausted(status: int, body: Any) -> bool:
    err = _error_object(body)
    details = err.get("details")
    words = {err.get("type"), err.get("code"), details.get("error_code") if isinstance(details, Mapping) else None}
    if status == 402 or words & _QUOTA_WORDS:
        return True
    return status == 400 and str(err.get("message") or "").startswith(_SPEND_LIMIT_PREFIX)


def _body_message(body: Any) -> str | None:
    """The human message inside an SDK error body (OpenAI and Anthropic shapes)."""
    err = _error_object(body)
    msg = err.get("message")
    kind = err.get("type") or err.get("code")
    if msg:
        return f"{kind}: {msg}" if kind else str(msg)
    return None


def from_sdk_exception(
    exc: BaseException,
    *,
    provider: str,
    operation: str,
    secrets: Iterable[str | None] = (),
) -> ProviderError:
    """Map an openai/anthropic SDK exception (or a plain OSError) onto our classes.

    Works by duck typing (`status_code`, `response.headers`, class names) so this module needs
    neither SDK. The message names the provider, the operation and the HTTP status; the SDK's own
    text is kept only after the API key is removed from it.
    """
    secrets = list(secrets)
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    retry_after = parse_retry_after(headers) if headers is not None else None
    names = {cls.__name__ for cls in type(exc).__mro__}
    where = f"{provider} {operation}"

    if status is None:
        if names & {"APITimeoutError", "TimeoutException", "TimeoutError", "ReadTimeout"}:
            msg = f"{where}: request timed out"
            return TransientProviderError(msg, error_type=ErrorType.TIMEOUT, may_have_acted=True)
        if names & {"APIConnectionError", "ConnectError", "RemoteProtocolError", "ConnectionError", "OSError"}:
            detail = redact(str(exc), secrets)[:300]
            msg = f"{where}: connection error ({detail})"
            return TransientProviderError(msg, error_type=ErrorType.SERVER_ERROR, may_have_acted=True)
        detail = redact(f"{type(exc).__name__}: {exc}", secrets)[:500]
        return ProviderError(f"{where}: {detail}", error_type=ErrorType.UNKNOWN, may_have_acted=True)

    etype = classify_http_status(int(status))
    body = getattr(exc, "body", None)
    body_msg = _body_message(body) or getattr(exc, "message", None) or ""
    detail = redact(str(body_msg), secrets)[:500]
    msg = f"{where}: HTTP {status}" + (f": {detail}" if detail else "")
    if _is_quota_exhausted(int(status), body):
        msg += "; the account's quota or spend limit is used up and retrying cannot help: raise the limit, then re-run"
        return QuotaExhaustedError(msg, error_type=ErrorType.BILLING, status_code=int(status))
    if etype in (ErrorType.AUTHENTICATION, ErrorType.PERMISSION):
        return CredentialsError(msg, error_type=etype, status_code=int(status))
    if etype is ErrorType.CONFLICT:
        # The call conflicts with the resource's state (cancel of a finished batch): the same call
        # fails the same way; the caller reads the resource again instead.
        return TerminalProviderError(msg, error_type=etype, status_code=int(status))
    if etype.retryable:
        # A 5xx may come after the server acted (the create landed, the answer did not).
        acted = int(status) >= 500
        return TransientProviderError(
            msg, error_type=etype, status_code=int(status), retry_after=retry_after, may_have_acted=acted
        )
    return TerminalProviderError(msg, error_type=etype, status_code=int(status))
