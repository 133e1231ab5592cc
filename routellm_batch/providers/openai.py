"""OpenAI Batch API (and OpenAI-compatible vendors through `ModelSpec.base_url`).

A shard is a JSONL file uploaded with purpose=batch; the batch carries our metadata
(run_id, shard_id, attempt) so that `list` finds it again after a lost create answer. Results
are two files: output (successful lines) and errors (failed lines, two shapes), both streamed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Literal

from routellm_batch.providers.base import (
    BatchFailure,
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
from routellm_batch.providers.errors import ErrorType, classify_http_status
from routellm_batch.providers.pricing import estimate_tokens
from routellm_batch.providers.prompt_cache import OPENAI_CACHE_MIN_TOKENS, prompt_cache_key
from routellm_batch.providers.usage import openai_usage

__all__ = ["OpenAIBatchProvider", "OPENAI_STATUSES", "OPENAI_ERROR_CODES"]

ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"

OPENAI_STATUSES: dict[str, BatchState] = {
    "validating": BatchState.VALIDATING,
    "failed": BatchState.FAILED,
    "in_progress": BatchState.IN_PROGRESS,
    "finalizing": BatchState.FINALIZING,
    "completed": BatchState.COMPLETED,
    "expired": BatchState.EXPIRED,
    "cancelling": BatchState.CANCELLING,
    "cancelled": BatchState.CANCELLED,
}

# Error `code` / `type` words seen in result lines and in batch `errors.data`.
OPENAI_ERROR_CODES: dict[str, ErrorType] = {
    "batch_expired": ErrorType.BATCH_EXPIRED,
    "batch_cancelled": ErrorType.BATCH_CANCELLED,
    "token_limit_exceeded": ErrorType.TOKEN_LIMIT_EXCEEDED,
    "invalid_request_error": ErrorType.INVALID_REQUEST,
    "invalid_api_key": ErrorType.AUTHENTICATION,
    "authentication_error": ErrorType.AUTHENTICATION,
    "permission_error": ErrorType.PERMISSION,
    "insufficient_quota": ErrorType.BILLING,
    "not_found_error": ErrorType.INVALID_REQUEST,
    "model_not_found": ErrorType.INVALID_REQUEST,
    "context_length_exceeded": ErrorType.INVALID_REQUEST,
    "rate_limit_exceeded": ErrorType.RATE_LIMITED,
    "requests": ErrorType.RATE_LIMITED,  # the error.type of OpenAI's 429 answers
    "rate_limit_error": ErrorType.RATE_LIMITED,
    "server_error": ErrorType.SERVER_ERROR,
    "api_error": ErrorType.SERVER_ERROR,
    "engine_overloaded": ErrorType.OVERLOADED,
    "overloaded_error": ErrorType.OVERLOADED,
    "timeout": ErrorType.TIMEOUT,
}


def _ts(value: int | float | None) -> datetime:
    return datetime.fromtimestamp(float(value or 0), tz=timezone.utc)


def _error_type(code: Any, status: int | None = None) -> ErrorType:
    if isinstance(code, str) and code in OPENAI_ERROR_CODES:
        return OPENAI_ERROR_CODES[code]
    return classify_http_status(status) if status is not None else ErrorType.UNKNOWN


class OpenAIBatchProvider(BatchProvider):
    name = "openai"
    # 200 MB read the strict way (10^6 bytes): never over the cap whichever MB the provider means.
    limits = BatchLimits(max_requests=50_000, max_bytes=200_000_000)
    tags_batches = True

    def _build_client(self, api_key: str, *, asynchronous: bool) -> Any:
        import openai

        kwargs: dict[str, Any] = dict(api_key=api_key, max_retries=0, timeout=self.timeout_s)
        if self.spec.base_url:
            kwargs["base_url"] = self.spec.base_url
        return openai.AsyncOpenAI(**kwargs) if asynchronous else openai.OpenAI(**kwargs)

    # -- dialect --------------------------------------------------------------------------------
    def render_body(self, row: Mapping[str, Any]) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if row.get("system"):
            messages.append({"role": "system", "content": str(row["system"])})
        if row.get("messages"):
            for i, m in enumerate(row["messages"]):
                if not isinstance(m, Mapping) or not m.get("role") or m.get("content") is None:
                    raise ValueError(f"messages[{i}]: needs a role and a content")
                messages.append({"role": str(m["role"]), "content": str(m["content"])})
        elif row.get("prompt") is not None and str(row["prompt"]).strip():
            messages.append({"role": "user", "content": str(row["prompt"])})
        else:
            raise ValueError("prompt/messages: the row has neither a prompt nor messages")
        body: dict[str, Any] = {
            **self.spec.request_template,
            "model": self.spec.model,
            "messages": messages,
            # max_completion_tokens: what current OpenAI models take (max_tokens is refused by
            # the o-series and gpt-5); OpenAI-compatible servers accept it too.
            "max_completion_tokens": self.max_tokens_for(row),
        }
        if self.output is not None:
            body["response_format"] = self._response_format
        system = str(row["system"]) if row.get("system") else None
        floor = self.cache_prefix_min_tokens()
        if system and floor is not None and estimate_tokens(system) >= floor:
            # OpenAI caches long prefixes by itself; the key sends requests sharing one to the same cache.
            body["prompt_cache_key"] = prompt_cache_key(system)
        return body

    @cached_property
    def _response_format(self) -> dict[str, Any]:
        from routellm_batch.structured import openai_response_format

        assert self.output is not None
        return openai_response_format(self.output)

    def provider_cache_min_tokens(self) -> int:
        return OPENAI_CACHE_MIN_TOKENS

    def serialize_request(self, request: BatchRequest) -> bytes:
        line = {"custom_id": request.custom_id, "method": "POST", "url": ENDPOINT, "body": request.body}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")

    def parse_request_line(self, line: bytes) -> BatchRequest:
        obj = json.loads(line)
        return BatchRequest(custom_id=obj["custom_id"], body=obj["body"])

    # -- remote ---------------------------------------------------------------------------------
    def _info(self, b: Any) -> BatchInfo:
        counts = b.request_counts
        failure = None
        if b.status == "failed":
            errors = list((b.errors.data if b.errors and b.errors.data else []) or [])
            codes = [e.code for e in errors]
            parts = [
                f"{e.code or 'error'}: {e.message or ''}" + (f" (line {e.line})" if e.line is not None else "")
                for e in errors[:20]
            ]
            message = "; ".join(parts) or "batch failed (the provider gave no reason)"
            etype = (
                ErrorType.TOKEN_LIMIT_EXCEEDED if "token_limit_exceeded" in codes else ErrorType.BATCH_VALIDATION_FAILED
            )
            failure = BatchFailure(etype, self.redact(message)[:2000])
        return BatchInfo(
            batch_id=b.id,
            state=OPENAI_STATUSES[b.status],
            provider_status=b.status,
            created_at=_ts(b.created_at),
            metadata=dict(b.metadata or {}),
            request_total=counts.total if counts else None,
            request_counts={"total": counts.total, "completed": counts.completed, "failed": counts.failed}
            if counts
            else {},
            output_file_id=b.output_file_id,
            error_file_id=b.error_file_id,
            failure=failure,
        )

    def upload_input(self, payload: ShardPayload) -> str | None:
        def upload() -> str:
            with payload.open_input() as f:
                obj = self.client().files.create(file=(f"{payload.shard_id}.jsonl", f, "application/jsonl"), purpose="batch")
            return obj.id

        return self._retrying("files.create", upload)

    def create(self, payload: ShardPayload, *, input_file_id: str | None, metadata: Mapping[str, str]) -> BatchInfo:
        if not input_file_id:
            raise ValueError("OpenAI batches need an uploaded input file (upload_input first)")
        timeout = self.create_timeout_s(0)
        batch = self._call(
            "batches.create",
            lambda: self.client().batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata=dict(metadata),
                timeout=timeout,
            ),
        )
        return self._info(batch)

    def create_timeout_s(self, payload_bytes: int) -> float:
        # The file is already uploaded: create carries a few hundred bytes.
        return self._create_timeout_s if self._create_timeout_s is not None else 30.0

    def retrieve(self, batch_id: str) -> BatchInfo:
        return self._info(self._retrying("batches.retrieve", lambda: self.client().batches.retrieve(batch_id)))

    async def aretrieve(self, batch_id: str) -> BatchInfo:
        client = self.client(asynchronous=True)
        return self._info(await self._aretrying("batches.retrieve", lambda: client.batches.retrieve(batch_id)))

    def list_batches(self, created_after: datetime) -> Iterator[BatchInfo]:
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.list_page_size}
            if after:
                kwargs["after"] = after
            page = self._retrying("batches.list", lambda: self.client().batches.list(**kwargs))
            data = list(page.data or [])
            for b in data:
                info = self._info(b)
                if info.created_at < created_after:
                    return  # newest first: everything further is older
                yield info
            if not data or page.has_more is False:
                return
            after = data[-1].id

    def _cancel(self, batch_id: str) -> BatchInfo:
        return self._info(self._retrying("batches.cancel", lambda: self.client().batches.cancel(batch_id)))

    async def _acancel(self, batch_id: str) -> BatchInfo:
        client = self.client(asynchronous=True)
        return self._info(await self._aretrying("batches.cancel", lambda: client.batches.cancel(batch_id)))

    def result_sources(self, info: BatchInfo) -> list[str]:
        sources = []
        if info.output_file_id:
            sources.append("output")
        if info.error_file_id:
            sources.append("errors")
        return sources

    def open_result_stream(self, info: BatchInfo, source: str) -> AbstractContextManager[Iterator[bytes]]:
        file_id = {"output": info.output_file_id, "errors": info.error_file_id}.get(source)
        if not file_id:
            raise ValueError(f"batch {info.batch_id} has no {source!r} file")
        return self._stream_file(file_id)

    @contextmanager
    def _stream_file(self, file_id: str) -> Iterator[Iterator[bytes]]:
        op = f"files.content({file_id})"
        manager = self._call(op, lambda: self.client().files.with_streaming_response.content(file_id))
        response = self._call(op, manager.__enter__)
        try:
            yield self._guarded(op, response.iter_bytes(1 << 16))
        finally:
            manager.__exit__(None, None, None)

    # -- results ---------------------------------------------------------------------------------
    def parse_result_line(self, line: bytes) -> RequestResult:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise MalformedResultLine(f"not JSON ({exc.msg} at char {exc.pos})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            raise MalformedResultLine("no custom_id")
        cid = obj["custom_id"]
        error = obj.get("error")
        response = obj.get("response")
        try:
            if error:
                code = error.get("code") or error.get("type")
                etype = _error_type(code)
                status = {
                    ErrorType.BATCH_EXPIRED: ResultStatus.EXPIRED,
                    ErrorType.BATCH_CANCELLED: ResultStatus.CANCELED,
                }.get(etype, ResultStatus.ERRORED)
                return RequestResult(cid, status, error_type=etype, error_message=self._message(code, error.get("message")))
            if not isinstance(response, dict):
                raise MalformedResultLine("neither response nor error", cid)
            code_http = int(response.get("status_code") or 0)
            body = response.get("body") or {}
            if code_http == 200:
                choice = body["choices"][0]
                return RequestResult(
                    cid,
                    ResultStatus.SUCCEEDED,
                    text=(choice.get("message") or {}).get("content"),
                    finish_reason=choice.get("finish_reason"),
                    **openai_usage(body.get("usage")),
                )
            err = body.get("error") or {}
            word = err.get("code") or err.get("type")
            etype = classify_http_status(code_http) if code_http else _error_type(word)
            if etype is ErrorType.UNKNOWN:
                etype = _error_type(word)
            return RequestResult(
                cid,
                ResultStatus.ERRORED,
                error_type=etype,
                error_message=self._message(word, err.get("message"), code_http),
            )
        except MalformedResultLine:
            raise
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise MalformedResultLine(f"unexpected shape ({type(exc).__name__}: {exc})", cid) from None

    def line_may_be_billed(self, source: str, raw_line: bytes) -> bool:
        # The output file holds the successful (billed) lines, the error file the failed ones.
        return source != "errors"

    def _message(self, code: Any, message: Any, http: int | None = None) -> str:
        head = f"HTTP {http} " if http else ""
        return self.redact(f"{head}{code or 'error'}: {message or ''}".strip())[:2000]
