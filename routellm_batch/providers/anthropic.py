"""Anthropic Message Batches API.

A shard is sent as one `requests` list. Batches carry no metadata, so the ledger records the
batch id the moment `create` answers, and a create whose answer was lost is found again by
time window, request count and, once the batch has ended, its custom_ids (batches/reconcile.py).
Results are one JSONL stream fetched through `messages.batches.results`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from functools import cached_property
from typing import Any

from routellm_batch.providers.base import (
    BatchInfo,
    BatchLimits,
    BatchProvider,
    BatchRequest,
    BatchState,
    MalformedResultLine,
    RequestResult,
    ResultStatus,
    ShardPayload,
)
from routellm_batch.providers.errors import ErrorType
from routellm_batch.providers.pricing import estimate_tokens
from routellm_batch.providers.prompt_cache import anthropic_cache_min_tokens
from routellm_batch.providers.usage import anthropic_usage

__all__ = ["AnthropicBatchProvider", "ANTHROPIC_PROCESSING_STATUSES", "ANTHROPIC_ERROR_TYPES", "ANTHROPIC_RESULT_TYPES"]

# "ended" is refined by `_state` (cancelled / expired / completed) from the batch's other fields.
ANTHROPIC_PROCESSING_STATUSES: dict[str, BatchState] = {
    "in_progress": BatchState.IN_PROGRESS,
    "canceling": BatchState.CANCELLING,
    "ended": BatchState.COMPLETED,
}

ANTHROPIC_ERROR_TYPES: dict[str, ErrorType] = {
    "invalid_request_error": ErrorType.INVALID_REQUEST,
    "authentication_error": ErrorType.AUTHENTICATION,
    "billing_error": ErrorType.BILLING,
    "permission_error": ErrorType.PERMISSION,
    "not_found_error": ErrorType.INVALID_REQUEST,
    "rate_limit_error": ErrorType.RATE_LIMITED,
    "timeout_error": ErrorType.TIMEOUT,
    "api_error": ErrorType.SERVER_ERROR,
    "overloaded_error": ErrorType.OVERLOADED,
    "memory_precondition_failed_error": ErrorType.INVALID_REQUEST,
    "memory_path_conflict_error": ErrorType.CONFLICT,
    "conflict_error": ErrorType.CONFLICT,
    "request_too_large": ErrorType.INVALID_REQUEST,
}

ANTHROPIC_RESULT_TYPES: dict[str, ResultStatus] = {
    "succeeded": ResultStatus.SUCCEEDED,
    "errored": ResultStatus.ERRORED,
    "canceled": ResultStatus.CANCELED,
    "expired": ResultStatus.EXPIRED,
}

_COUNT_FIELDS = ("processing", "succeeded", "errored", "canceled", "expired")
_RESULT_TYPE = re.compile(rb'"type"\s*:\s*"(succeeded|errored|canceled|expired)"')


class AnthropicBatchProvider(BatchProvider):
    name = "anthropic"
    # 256 MB read the strict way (10^6 bytes): never over the cap whichever MB the provider means.
    limits = BatchLimits(max_requests=100_000, max_bytes=256_000_000)
    tags_batches = False

    def _build_client(self, api_key: str, *, asynchronous: bool) -> Any:
        import anthropic

        kwargs: dict[str, Any] = dict(api_key=api_key, max_retries=0, timeout=self.timeout_s)
        if self.spec.base_url:
            kwargs["base_url"] = self.spec.base_url
        return anthropic.AsyncAnthropic(**kwargs) if asynchronous else anthropic.Anthropic(**kwargs)

    # -- dialect --------------------------------------------------------------------------------
    def render_body(self, row: Mapping[str, Any]) -> dict[str, Any]:
        systems: list[str] = [str(row["system"])] if row.get("system") else []
        messages: list[dict[str, str]] = []
        if row.get("messages"):
            for i, m in enumerate(row["messages"]):
                if not isinstance(m, Mapping) or not m.get("role") or m.get("content") is None:
                    raise ValueError(f"messages[{i}]: needs a role and a content")
                if m["role"] == "system":
                    # The Messages API takes the system prompt as a parameter, not a message.
                    systems.append(str(m["content"]))
                else:
                    messages.append({"role": str(m["role"]), "content": str(m["content"])})
            if not messages:
                raise ValueError("messages: only system messages, nothing to answer")
        elif row.get("prompt") is not None and str(row["prompt"]).strip():
            messages.append({"role": "user", "content": str(row["prompt"])})
        else:
            raise ValueError("prompt/messages: the row has neither a prompt nor messages")
        body: dict[str, Any] = {
            **self.spec.request_template,
            "model": self.spec.model,
            "max_tokens": self.max_tokens_for(row),
            "messages": messages,
        }
        if systems:
            system = "\n\n".join(systems)
            floor = self.cache_prefix_min_tokens()
            if floor is not None and estimate_tokens(system) >= floor:
                # Anthropic caches only up to a breakpoint: mark the shared system prompt (written once
                # at the write price, read by the batch's later requests at a tenth of the input price).
                body["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
            else:
                body["system"] = system
        if self.output is not None:
            body["output_config"] = self._output_config
        return body

    @cached_property
    def _output_config(self) -> dict[str, Any]:
        from routellm_batch.structured import anthropic_output_config

        assert self.output is not None
        return anthropic_output_config(self.output)

    def provider_cache_min_tokens(self) -> int:
        return anthropic_cache_min_tokens(self.spec.model)

    def serialize_request(self, request: BatchRequest) -> bytes:
        line = {"custom_id": request.custom_id, "params": request.body}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def parse_request_line(self, line: bytes) -> BatchRequest:
        obj = json.loads(line)
        return BatchRequest(custom_id=obj["custom_id"], body=obj["params"])

    # -- remote ---------------------------------------------------------------------------------
    def _info(self, b: Any) -> BatchInfo:
        counts = {k: int(getattr(b.request_counts, k, 0) or 0) for k in _COUNT_FIELDS}
        return BatchInfo(
            batch_id=b.id,
            state=self._state(b, counts),
            provider_status=b.processing_status,
            created_at=b.created_at,
            request_total=sum(counts.values()),
            request_counts=counts,
        )

    @staticmethod
    def _state(b: Any, counts: Mapping[str, int]) -> BatchState:
        state = ANTHROPIC_PROCESSING_STATUSES[b.processing_status]
        if state is BatchState.COMPLETED:
            if b.cancel_initiated_at is not None:
                return BatchState.CANCELLED
            if counts.get("expired"):
                return BatchState.EXPIRED
        return state

    def create(self, payload: ShardPayload, *, input_file_id: str | None, metadata: Mapping[str, str]) -> BatchInfo:
        # No metadata on Anthropic batches: the caller records the id before anything else.
        with payload.open_input() as f:
            requests = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        timeout = self.create_timeout_s(payload.bytes)
        batch = self._call(
            "messages.batches.create",
            lambda: self.client().messages.batches.create(requests=requests, timeout=timeout),
        )
        return self._info(batch)

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self._info(
            self._retrying("messages.batches.retrieve", lambda: self.client().messages.batches.retrieve(batch_id))
        )

    async def aretrieve(self, batch_id: str) -> BatchInfo:
        client = self.client(asynchronous=True)
        return self._info(
            await self._aretrying("messages.batches.retrieve", lambda: client.messages.batches.retrieve(batch_id))
        )

    def list_batches(self, created_after: datetime) -> Iterator[BatchInfo]:
        after_id: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.list_page_size}
            if after_id:
                kwargs["after_id"] = after_id
            page = self._retrying("messages.batches.list", lambda: self.client().messages.batches.list(**kwargs))
            data = list(page.data or [])
            for b in data:
                info = self._info(b)
                if info.created_at < created_after:
                    return  # newest first
                yield info
            if not data or page.has_more is False:
                return
            after_id = page.last_id or data[-1].id

    def _cancel(self, batch_id: str) -> BatchInfo:
        return self._info(
            self._retrying("messages.batches.cancel", lambda: self.client().messages.batches.cancel(batch_id))
        )

    async def _acancel(self, batch_id: str) -> BatchInfo:
        client = self.client(asynchronous=True)
        return self._info(
            await self._aretrying("messages.batches.cancel", lambda: client.messages.batches.cancel(batch_id))
        )

    def result_sources(self, info: BatchInfo) -> list[str]:
        return ["results"] if info.state.terminal else []

    def open_result_stream(self, info: BatchInfo, source: str) -> AbstractContextManager[Iterator[bytes]]:
        if source != "results":
            raise ValueError(f"anthropic batches have one result source 'results', not {source!r}")
        return self._stream_results(info.batch_id)

    @contextmanager
    def _stream_results(self, batch_id: str) -> Iterator[Iterator[bytes]]:
        op = f"messages.batches.results({batch_id})"
        # results() retrieves the batch, then GETs its results_url as a stream.
        manager = self._call(op, lambda: self.client().messages.batches.with_streaming_response.results(batch_id))
        response = self._call(op, manager.__enter__)
        try:
            yield self._guarded(op, response.iter_bytes(1 << 16))
        finally:
            manager.__exit__(None, None, None)

    # -- results ---------------------------------------------------------------------------------
    def line_may_be_billed(self, source: str, raw_line: bytes) -> bool:
        # Only succeeded requests are billed; a readable "type" of a failure proves it was not.
        m = _RESULT_TYPE.search(raw_line)
        return m is None or m.group(1) == b"succeeded"

    def parse_result_line(self, line: bytes) -> RequestResult:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise MalformedResultLine(f"not JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            raise MalformedResultLine("no custom_id")
        cid = obj["custom_id"]
        try:
            result = obj["result"]
            kind = result["type"]
            status = ANTHROPIC_RESULT_TYPES.get(kind)
            if status is None:
                raise MalformedResultLine(f"unknown result type {kind!r}", cid)
            if status is ResultStatus.SUCCEEDED:
                message = result["message"]
                text = "".join(
                    block.get("text", "") for block in message.get("content") or [] if block.get("type") == "text"
                )
                return RequestResult(
                    cid,
                    status,
                    text=text,
                    finish_reason=message.get("stop_reason"),
                    **anthropic_usage(message.get("usage")),
                )
            if status is ResultStatus.ERRORED:
                outer = result.get("error") or {}
                inner = outer.get("error", outer) if isinstance(outer, dict) else {}
                word = inner.get("type")
                etype = ANTHROPIC_ERROR_TYPES.get(word, ErrorType.UNKNOWN)
                msg = self.redact(f"{word or 'error'}: {inner.get('message') or ''}")[:2000]
                return RequestResult(cid, status, error_type=etype, error_message=msg)
            if status is ResultStatus.EXPIRED:
                return RequestResult(
                    cid, status, error_type=ErrorType.BATCH_EXPIRED, error_message="expired: the batch ended before this request ran"
                )
            return RequestResult(
                cid, status, error_type=ErrorType.BATCH_CANCELLED, error_message="canceled: the batch was canceled before this request ran"
            )
        except MalformedResultLine:
            raise
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise MalformedResultLine(f"unexpected shape ({type(exc).__name__}: {exc})", cid) from None
