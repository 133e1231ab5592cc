"""One BatchProvider interface over neutral types; limits are declared data.

A provider knows its API's dialect (how a routed row becomes a request, how a shard is sent,
what a result line means) and nothing about runs: sharding, the ledger, polling and the retry of
failed rows live once in shared code (providers/sharding.py, ledger.py, stages/).

Clients are built lazily, on first use, with the API key read then from the environment
variable the ModelSpec names; nothing is built at import. Every SDK exception is mapped at one
boundary (`_call`) onto providers.errors, with the key removed from the text.

Light module: the SDKs are imported inside the concrete providers' client builders.
"""

from __future__ import annotations

import enum
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, ClassVar, Literal, TypeVar

from routellm_batch.config import BatchSettings, ModelSpec, PromptCachingSettings, StructuredOutput
from routellm_batch.crashpoints import crash_point
from routellm_batch.providers.errors import (
    REDACTED,
    CredentialsError,
    ErrorType,
    ProviderError,
    TerminalProviderError,
    from_sdk_exception,
    redact,
)
from routellm_batch.providers.retry import RetryPolicy, acall_with_retries, call_with_retries

__all__ = [
    "BatchFailure",
    "BatchInfo",
    "BatchLimits",
    "BatchProvider",
    "BatchRequest",
    "BatchState",
    "MalformedResultLine",
    "RequestResult",
    "ResultStatus",
    "ShardPayload",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchState(str, enum.Enum):
    """A provider batch's state, in one vocabulary for every provider."""

    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (BatchState.COMPLETED, BatchState.FAILED, BatchState.EXPIRED, BatchState.CANCELLED)


class ResultStatus(str, enum.Enum):
    """One request's outcome (the responses table's `status` column)."""

    SUCCEEDED = "succeeded"
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"
    UNPARSABLE = "unparsable"
    """Answered (and billed), but the answer is not JSON or breaks the declared output (config `output`)."""


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may hold. Declared per provider; config.batch may only lower them."""

    max_requests: int
    max_bytes: int

    def capped(self, settings: BatchSettings) -> BatchLimits:
        return BatchLimits(
            max_requests=min(self.max_requests, settings.max_requests or self.max_requests),
            max_bytes=min(self.max_bytes, settings.max_bytes or self.max_bytes),
        )


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    body: Mapping[str, Any]
    """The API request body (chat.completions / messages params) for this prompt."""


@dataclass(frozen=True)
class BatchFailure:
    """Why a batch failed as a whole (every request in it shares this outcome)."""

    error_type: ErrorType
    message: str


@dataclass(frozen=True)
class BatchInfo:
    batch_id: str
    state: BatchState
    provider_status: str
    """The provider's own status word (kept for the ledger and for humans)."""
    created_at: datetime
    metadata: Mapping[str, str] = field(default_factory=dict)
    request_total: int | None = None
    request_counts: Mapping[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    failure: BatchFailure | None = None


@dataclass(frozen=True)
class RequestResult:
    """One parsed result line, joined back to its prompt by custom_id."""

    custom_id: str
    status: ResultStatus
    text: str | None = None
    finish_reason: str | None = None
    input_tokens: int | None = None
    """Every input token, cached or not (the cache counts below are parts of it)."""
    output_tokens: int | None = None
    """Every output token (reasoning_tokens is a part of it)."""
    cached_input_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    error_type: ErrorType | None = None
    error_message: str | None = None
    retry: bool | None = None
    """Overrides the error type's next step (an unparsable answer is retried only when the config says so)."""

    @property
    def retryable(self) -> bool:
        if self.status is ResultStatus.SUCCEEDED:
            return False
        return self.retry if self.retry is not None else (self.error_type or ErrorType.UNKNOWN).retryable


class MalformedResultLine(ValueError):
    """A result line that is not what the provider documents. `custom_id` when it could be read."""

    def __init__(self, message: str, custom_id: str | None = None) -> None:
        super().__init__(message)
        self.custom_id = custom_id


@dataclass(frozen=True)
class ShardPayload:
    """One shard's serialized requests, ready to send: `open_input()` yields the JSONL bytes
    (one `serialize_request` line per request, in shard order)."""

    shard_id: str
    run_id: str
    attempt: int
    row_count: int
    bytes: int
    open_input: Callable[[], AbstractContextManager[IO[bytes]]]


ProviderName = Literal["openai", "anthropic"]


class BatchProvider(ABC):
    """One provider's batch API. Subclasses fill in the dialect; the shape is shared."""

    name: ClassVar[ProviderName]
    limits: ClassVar[BatchLimits]
    tags_batches: ClassVar[bool]
    """True when batches carry our metadata (run_id, shard_id) that `list_batches` returns."""
    list_page_size: int = 100
    """Batches per `list` page (both APIs allow 100)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        retry: RetryPolicy | None = None,
        timeout_s: float = 120.0,
        create_timeout_s: float | None = None,
        api_key: str | None = None,
        output: StructuredOutput | None = None,
        prompt_caching: PromptCachingSettings | None = None,
    ) -> None:
        """`api_key`: the key itself, for callers that hold it in memory (an Airflow connection);
        None reads the environment variable `spec.api_key_env` on first use. `output`: the answers'
        declared shape, asked of the model in each request; `prompt_caching`: when to send caching hints
        (None: none)."""
        if spec.provider != self.name:
            raise ValueError(f"{type(self).__name__} serves provider {self.name!r}, the spec says {spec.provider!r}")
        self.spec = spec
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self._create_timeout_s = create_timeout_s
        self._clients: dict[bool, Any] = {}
        self._key: str | None = api_key or None
        self.output = output
        self.prompt_caching = prompt_caching

    # -- credentials and clients ----------------------------------------------------------------
    def api_key(self) -> str:
        """The key given at construction, else from the environment; a missing variable is named, its value never shown."""
        if self._key is None:
            value = os.environ.get(self.spec.api_key_env)
            if not value:
                raise CredentialsError(
                    f"environment variable {self.spec.api_key_env} is not set; it must hold the API key "
                    f"for {self.name} model {self.spec.model!r} (ModelSpec.api_key_env)",
                    error_type=ErrorType.AUTHENTICATION,
                )
            self._key = value
        return self._key

    def client(self, *, asynchronous: bool = False) -> Any:
        """The SDK client, built on first use. SDK retries are off: ours (tenacity) decide."""
        if asynchronous not in self._clients:
            self._clients[asynchronous] = self._build_client(self.api_key(), asynchronous=asynchronous)
        return self._clients[asynchronous]

    @abstractmethod
    def _build_client(self, api_key: str, *, asynchronous: bool) -> Any: ...

    def close(self) -> None:
        sync = self._clients.pop(False, None)
        if sync is not None:
            sync.close()
        # Async clients are closed by the event loop that used them (`aclose`).

    async def aclose(self) -> None:
        client = self._clients.pop(True, None)
        if client is not None:
            await client.close()

    def create_timeout_s(self, payload_bytes: int) -> float:
        """How long a create call may take: also how long an unanswered create can still land."""
        if self._create_timeout_s is not None:
            return self._create_timeout_s
        # Sending the body dominates: allow ~1 MB/s on top of a base.
        return min(900.0, 30.0 + payload_bytes / 1_000_000)

    # -- the one exception boundary --------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped, with the key removed, at this one place
            raise from_sdk_exception(exc, provider=self.name, operation=operation, secrets=[self._key]) from None

    async def _acall(self, operation: str, fn: Callable[[], Any]) -> Any:
        try:
            return await fn()
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise from_sdk_exception(exc, provider=self.name, operation=operation, secrets=[self._key]) from None

    def _retrying(self, operation: str, fn: Callable[[], T]) -> T:
        """An idempotent call, retried on transient failures by the shared policy."""
        return call_with_retries(lambda: self._call(operation, fn), policy=self.retry, what=f"{self.name} {operation}")

    async def _aretrying(self, operation: str, fn: Callable[[], Any]) -> Any:
        return await acall_with_retries(
            lambda: self._acall(operation, fn), policy=self.retry, what=f"{self.name} {operation}"
        )

    def _guarded(self, operation: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """A result download's chunks, with the API key removed (providers may quote it in error
        lines, and raw result files are kept in the ledger); a connection broken mid-stream
        becomes our (transient) error."""
        key = self._key.encode() if self._key and len(self._key) >= 4 else b""
        held = b""  # the tail of the last chunk: the start of a key split across two chunks
        try:
            for chunk in chunks:
                if key:
                    text = (held + chunk).replace(key, REDACTED.encode())
                    cut = max(0, len(text) - len(key) + 1)
                    chunk, held = text[:cut], text[cut:]
                if chunk:
                    yield chunk
                    crash_point("results.download")  # the consumer has handled part of the results
            if held:
                yield held
        except Exception as exc:  # noqa: BLE001 - a broken download is a transient call failure
            raise from_sdk_exception(exc, provider=self.name, operation=operation, secrets=[self._key]) from None

    def redact(self, text: str) -> str:
        return redact(text, [self._key])

    # -- the dialect: rows -> requests -> bytes ---------------------------------------------------
    def cache_prefix_min_tokens(self) -> int | None:
        """From how many (estimated) tokens a shared system prompt gets caching hints; None: no hints."""
        settings = self.prompt_caching
        if settings is None or not settings.enabled:
            return None
        return settings.min_prefix_tokens or self.provider_cache_min_tokens()

    @abstractmethod
    def provider_cache_min_tokens(self) -> int:
        """The provider's documented minimum cacheable prompt length for this model."""

    def max_tokens_for(self, row: Mapping[str, Any]) -> int:
        value = row.get("max_tokens")
        return int(value) if value is not None else self.spec.max_tokens

    @abstractmethod
    def render_body(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The request body for one routed row (prompt or messages, system, max_tokens, template).
        Raises ValueError naming the field when the row cannot become a request."""

    @abstractmethod
    def serialize_request(self, request: BatchRequest) -> bytes:
        """One line of the shard input (newline-terminated), exactly as it is sent."""

    @abstractmethod
    def parse_request_line(self, line: bytes) -> BatchRequest:
        """The inverse of `serialize_request` (to resubmit a request under a new custom_id)."""

    # -- the remote API ----------------------------------------------------------------------------
    def upload_input(self, payload: ShardPayload) -> str | None:
        """Upload the shard input when the API needs a file first; returns its id. Idempotent enough:
        a duplicate upload costs nothing (files are not billed)."""
        return None

    @abstractmethod
    def create(self, payload: ShardPayload, *, input_file_id: str | None, metadata: Mapping[str, str]) -> BatchInfo:
        """Create the batch: ONE try, no retries (a lost answer must be reconciled, not retried)."""

    @abstractmethod
    def retrieve(self, batch_id: str) -> BatchInfo: ...

    @abstractmethod
    async def aretrieve(self, batch_id: str) -> BatchInfo:
        """`retrieve` with the async client (for an Airflow trigger's event loop)."""

    @abstractmethod
    def list_batches(self, created_after: datetime) -> Iterator[BatchInfo]:
        """Batches created at or after `created_after`, newest first, every page."""

    def cancel(self, batch_id: str) -> BatchInfo:
        """Cancel a batch; one that has already finished is read again instead.

        OpenAI answers 409 (ConflictError) to a cancel of a completed, failed or expired batch: the
        batch simply ended before the cancel came, which is what the caller needs to know."""
        try:
            return self._cancel(batch_id)
        except TerminalProviderError as exc:
            if exc.error_type is not ErrorType.CONFLICT:
                raise
            log.info("%s: batch %s had already ended when it was cancelled (%s); reading it again", self.name, batch_id, exc)
            return self.retrieve(batch_id)

    async def acancel(self, batch_id: str) -> BatchInfo:
        """`cancel` with the async client (for an Airflow trigger's event loop)."""
        try:
            return await self._acancel(batch_id)
        except TerminalProviderError as exc:
            if exc.error_type is not ErrorType.CONFLICT:
                raise
            log.info("%s: batch %s had already ended when it was cancelled (%s); reading it again", self.name, batch_id, exc)
            return await self.aretrieve(batch_id)

    @abstractmethod
    async def _acancel(self, batch_id: str) -> BatchInfo: ...

    @abstractmethod
    def _cancel(self, batch_id: str) -> BatchInfo:
        """The cancel call itself (retried on transient failures)."""

    @abstractmethod
    def result_sources(self, info: BatchInfo) -> list[str]:
        """Names of the result streams a terminal batch has (OpenAI: output, errors; Anthropic: results)."""

    @abstractmethod
    def open_result_stream(self, info: BatchInfo, source: str) -> AbstractContextManager[Iterator[bytes]]:
        """Stream one result source as byte chunks, never the whole file in memory."""

    @abstractmethod
    def parse_result_line(self, line: bytes) -> RequestResult:
        """One result line -> a neutral result; raises MalformedResultLine."""

    @abstractmethod
    def line_may_be_billed(self, source: str, raw_line: bytes) -> bool:
        """For an unparseable line: could it be a billed answer? (True when unsure: resubmitting a
        billed request pays twice, so only lines known to be failures are resubmitted.)"""
