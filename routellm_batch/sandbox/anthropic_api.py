"""The Anthropic Message Batches API of the sandbox: endpoints, batch objects, result lines.

Shapes follow the official SDK's types (anthropic.types.messages.MessageBatch,
MessageBatchIndividualResponse, Message) and docs/provider-batch-apis.md. Params are
validated asynchronously as the real API does: a bad request becomes an errored result.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from routellm_batch.sandbox.responders import Answer, ChatRequest, PromptCache, UnknownPrompt, prompt_tokens
from routellm_batch.sandbox.structured import structured_answer
from routellm_batch.sandbox.store import (
    ApiCall,
    ApiError,
    ApiResponse,
    BatchRecord,
    FinalLine,
    PlannedError,
    Rendered,
    RequestPlan,
    SandboxStore,
    new_id,
    quote_key,
)

__all__ = ["ENDPOINTS", "render", "status_of"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DAY = 24 * 3600
_ERROR_TYPES = {"invalid_request": "invalid_request_error", "server_error": "api_error", "overloaded": "overloaded_error"}


def _rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise ValueError(f"{where}.{i}: only text blocks are supported by the sandbox")
            parts.append(block["text"])
        return "\n".join(parts)
    raise ValueError(f"{where}: Input should be a valid string or list of content blocks")


def _cache_control(content: Any, where: str) -> str | None:
    """The TTL of the last `cache_control` breakpoint among a content's blocks ("5m" or "1h"), if any."""
    ttl = None
    for i, block in enumerate(content if isinstance(content, list) else []):
        control = block.get("cache_control")
        if control is None:
            continue
        if not isinstance(control, dict) or control.get("type") != "ephemeral" or control.get("ttl", "5m") not in ("5m", "1h"):
            raise ValueError(f"{where}.{i}.cache_control: expected {{type: ephemeral, ttl: 5m | 1h}}")
        ttl = control.get("ttl", "5m")
    return ttl


def _cache_breakpoint(params: dict[str, Any]) -> tuple[int | None, Literal["5m", "1h"]]:
    """How many leading prompt parts (system first) the last cache_control breakpoint covers, and its TTL."""
    system = params.get("system")
    marks = [_cache_control(system, "system")] if system is not None else []
    marks += [_cache_control(m.get("content"), f"messages.{i}.content") for i, m in enumerate(params["messages"])]
    last = max((i for i, ttl in enumerate(marks) if ttl), default=None)
    return (None, "5m") if last is None else (last + 1, marks[last])  # type: ignore[return-value]


def _thinking_budget(params: dict[str, Any]) -> int | None:
    thinking = params.get("thinking")
    if thinking is None or (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        return None
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled" or not isinstance(budget, int) or budget < 1024:
        raise ValueError("thinking: expected {type: enabled, budget_tokens: integer >= 1024}")
    return budget


def _chat_request(params: dict[str, Any]) -> ChatRequest:
    """The neutral request, or ValueError in the Messages API's words (-> an errored result)."""
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("model: Field required")
    max_tokens = params.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError("max_tokens: Field required (an integer >= 1)")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages: Field required (a non-empty list)")
    pairs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        pairs.append((m["role"], _text(m.get("content"), f"messages.{i}.content")))
    system = params.get("system")
    breakpoint_, ttl = _cache_breakpoint(params)
    return ChatRequest(
        provider="anthropic",
        model=model,
        messages=tuple(pairs),
        system=_text(system, "system") if system is not None else None,
        max_tokens=max_tokens,
        cache_breakpoint=breakpoint_,
        cache_ttl=ttl,
        thinking_budget=_thinking_budget(params),
        answer_schema=_answer_schema(params.get("output_config")),
    )


def _answer_schema(output_config: Any) -> str | None:
    """The schema of `output_config: {format: {type: json_schema, schema}}` (structured outputs), as JSON text."""
    if output_config is None:
        return None
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise ValueError("output_config.format: expected {type: json_schema, schema: {...}}")
    return json.dumps(fmt["schema"])


def _plan(store: SandboxStore, custom_id: str, params: Any, cache: PromptCache) -> RequestPlan:
    model = params.get("model") if isinstance(params, dict) else None
    model = model if isinstance(model, str) else ""
    try:
        if not isinstance(params, dict):
            raise ValueError("params: Input should be a valid dictionary")
        request = _chat_request(params)
    except ValueError as exc:
        return RequestPlan(custom_id, model, PlannedError("invalid_request", str(exc)))
    try:
        answer, broken = structured_answer(request, store.responder.respond(request), custom_id, store.faults)
        store.count_fault(broken and f"unparsable_{broken}")
        outcome: Answer | PlannedError = cache.apply(request, answer)
    except UnknownPrompt as exc:
        outcome = PlannedError("invalid_request", str(exc))
    return RequestPlan(custom_id, model, outcome, prompt_tokens(request))


def batches_create(store: SandboxStore, call: ApiCall) -> ApiResponse:
    if len(call.body) > store.limits.anthropic_max_bytes:
        raise ApiError(413, "request_too_large", f"Request exceeds the maximum size of {store.limits.anthropic_max_bytes} bytes.")
    body = call.json()
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "invalid_request", "requests: Field required (a non-empty list)")
    if len(requests) > store.limits.anthropic_max_requests:
        raise ApiError(400, "invalid_request", f"requests: at most {store.limits.anthropic_max_requests} requests per batch, got {len(requests)}")
    seen: set[str] = set()
    for i, r in enumerate(requests):
        cid = r.get("custom_id") if isinstance(r, dict) else None
        if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
            raise ApiError(400, "invalid_request", f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if cid in seen:
            raise ApiError(400, "invalid_request", f"requests.{i}.custom_id: duplicate custom_id {cid!r}; custom_ids must be unique within a batch")
        seen.add(cid)
        if "params" not in r:
            raise ApiError(400, "invalid_request", f"requests.{i}.params: Field required")
    # The responder runs outside the lock.
    cache = PromptCache()  # one batch's requests, in order, share the provider's prompt cache
    plans = [_plan(store, r["custom_id"], r["params"], cache) for r in requests]
    with store.lock:
        seq = store.next_seq_locked("anthropic")
        now = store.now()
        expire = store.batch_fault_locked("expire", "anthropic", seq)
        lose = store.batch_fault_locked("lose_create", "anthropic", seq)
        malformed = store.batch_fault_locked("malformed_line", "anthropic", seq)
        models = sorted({p.model for p in plans if p.model})
        batch = BatchRecord(
            provider="anthropic",
            id=new_id("msgbatch_", 24),
            seq=seq,
            created_wall=store.wall(now),
            created_mono=now,
            requests=plans,
            fate="expire" if expire else "normal",
            model=models[0] if len(models) == 1 else (",".join(models) or None),
            malformed_line=malformed,
            lost_response=lose,
            list_lag=store.list_lag_locked("anthropic"),
        )
        store.apply_request_faults_locked("anthropic", seq, plans)
        for name, on in (("expire", expire), ("lose_create", lose), ("malformed_line", malformed)):
            if on:
                store.faults_injected[name] += 1
        store.add_batch_locked(batch)
        response = ApiResponse(batch_object(store, batch, call.base_url), lose=lose)
    store.commit_batch(batch)
    return response


def status_of(store: SandboxStore, batch: BatchRecord) -> str:
    """A batch decided but not yet published (results being rendered) is still in progress."""
    if batch.published:
        return "ended"
    return "canceling" if batch.cancel_mono is not None else "in_progress"


def batch_object(store: SandboxStore, b: BatchRecord, base_url: str) -> dict[str, Any]:
    status = status_of(store, b)
    counts = {"processing": len(b.requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if status == "ended":
        # All but `processing` stay 0 until the batch has ended.
        counts["processing"] = 0
        for ln in b.lines:
            counts[_result_type(ln)] += 1
    return {
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "created_at": _rfc3339(b.created_wall),
        "expires_at": _rfc3339(b.created_wall + _DAY),
        "ended_at": _rfc3339(b.ended_wall) if status == "ended" else None,
        "cancel_initiated_at": _rfc3339(b.cancel_wall),
        "archived_at": None,
        "results_url": f"{base_url}/v1/messages/batches/{b.id}/results" if status == "ended" else None,
    }


def _get_locked(store: SandboxStore, batch_id: str) -> BatchRecord:
    b = store.get_batch_locked("anthropic", batch_id)
    if b.deleted:
        raise ApiError(404, "not_found", f"No batch found with id '{batch_id}'.")
    return b


def batches_retrieve(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        return ApiResponse(batch_object(store, _get_locked(store, call.params["id"]), call.base_url))


def batches_list(store: SandboxStore, call: ApiCall) -> ApiResponse:
    q = call.query
    try:
        limit = int(q.get("limit", "20"))
    except ValueError:
        raise ApiError(400, "invalid_request", "limit: Input should be a valid integer") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "invalid_request", "limit: Input should be between 1 and 1000")
    with store.lock:
        store.refresh_all_locked()
        items = [
            b for b in reversed(store.batches.values()) if b.provider == "anthropic" and not b.deleted and store.listed_locked(b)
        ]
        ids = [b.id for b in items]
        for cursor in ("after_id", "before_id"):
            if cursor in q and q[cursor] not in ids:
                raise ApiError(400, "invalid_request", f"{cursor}: no batch with id {q[cursor]!r}")
        if "before_id" in q:
            end = ids.index(q["before_id"])
            start = max(0, end - limit)
            page, has_more = items[start:end], start > 0
        else:
            start = ids.index(q["after_id"]) + 1 if "after_id" in q else 0
            page, has_more = items[start : start + limit], start + limit < len(items)
        data = [batch_object(store, b, call.base_url) for b in page]
        return ApiResponse(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )


def batches_cancel(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        b = _get_locked(store, call.params["id"])
        if b.terminal is None and b.cancel_mono is None:
            now = store.now()
            b.cancel_mono, b.cancel_wall = now, store.wall(now)
            b.cancel_finished_share = store.faults.cancel_finished_share
            store.save_locked()
    store.settle()  # with tick 0 the cancel ends at once: answer with the ended batch
    with store.lock:
        return ApiResponse(batch_object(store, _get_locked(store, b.id), call.base_url))


def batches_delete(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        b = _get_locked(store, call.params["id"])
        if not b.published:
            raise ApiError(400, "invalid_request", "Message Batches can only be deleted once they have finished processing.")
        b.deleted = True
        store.save_locked()
        return ApiResponse({"id": b.id, "type": "message_batch_deleted"})


def batches_results(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        b = _get_locked(store, call.params["id"])
        if b.results is None:
            raise ApiError(404, "not_found", f"Results for batch {b.id} are not available: it has not ended yet.")
        return ApiResponse(quote_key(b.results, call.api_key), content_type="application/binary")


# -- results --------------------------------------------------------------------------------
def _result_type(ln: FinalLine) -> str:
    o = ln.outcome
    if isinstance(o, Answer):
        return "succeeded"
    return {"expired": "expired", "canceled": "canceled"}.get(o.kind, "errored")


def _content(b: BatchRecord, ln: FinalLine, o: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if o.reasoning_tokens:
        # Thinking is billed as output and not counted apart in usage; its text is summarized.
        signature = hashlib.sha256(f"thinking\x00{b.id}\x00{ln.custom_id}".encode()).hexdigest()
        blocks.append({"type": "thinking", "thinking": f"({o.reasoning_tokens} tokens of thinking)", "signature": signature})
    if o.text or not blocks:
        blocks.append({"type": "text", "text": o.text})
    return blocks


def _result(b: BatchRecord, ln: FinalLine) -> dict[str, Any]:
    o = ln.outcome
    kind = _result_type(ln)
    if isinstance(o, Answer):
        message = {
            "id": "msg_" + hashlib.sha256(f"{b.id}\x00{ln.custom_id}".encode()).hexdigest()[:24],
            "type": "message",
            "role": "assistant",
            "model": ln.model,
            "content": _content(b, ln, o),
            "stop_reason": "max_tokens" if o.truncated else "end_turn",
            "stop_sequence": None,
            # Anthropic's input_tokens leave out the cache reads and writes (the project's include them).
            "usage": {
                "input_tokens": o.input_tokens - o.cached_input_tokens - o.cache_write_5m_tokens - o.cache_write_1h_tokens,
                "output_tokens": o.output_tokens,
                "cache_creation_input_tokens": o.cache_write_5m_tokens + o.cache_write_1h_tokens,
                "cache_read_input_tokens": o.cached_input_tokens,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": o.cache_write_5m_tokens,
                    "ephemeral_1h_input_tokens": o.cache_write_1h_tokens,
                },
                "service_tier": "batch",
            },
        }
        return {"custom_id": ln.custom_id, "result": {"type": "succeeded", "message": message}}
    if kind == "errored":
        assert isinstance(o, PlannedError)
        error = {"type": "error", "error": {"type": _ERROR_TYPES[o.kind], "message": o.message}}
        return {"custom_id": ln.custom_id, "result": {"type": "errored", "error": error}}
    return {"custom_id": ln.custom_id, "result": {"type": kind}}


def render(store: SandboxStore, b: BatchRecord) -> Rendered:
    """The results JSONL of a decided batch (no lock held: reads only the decided lines)."""
    rows = [json.dumps(_result(b, ln), ensure_ascii=False) for ln in b.lines]
    if b.malformed_line and rows:
        rows.insert(len(rows) // 2, rows[0][: max(1, len(rows[0]) // 2)])
    return Rendered(results="".join(r + "\n" for r in rows).encode())


ENDPOINTS = [
    ("POST", r"/v1/messages/batches", "anthropic.batches.create", batches_create),
    ("GET", r"/v1/messages/batches", "anthropic.batches.list", batches_list),
    ("GET", r"/v1/messages/batches/(?P<id>[^/]+)", "anthropic.batches.retrieve", batches_retrieve),
    ("DELETE", r"/v1/messages/batches/(?P<id>[^/]+)", "anthropic.batches.delete", batches_delete),
    ("POST", r"/v1/messages/batches/(?P<id>[^/]+)/cancel", "anthropic.batches.cancel", batches_cancel),
    ("GET", r"/v1/messages/batches/(?P<id>[^/]+)/results", "anthropic.batches.results", batches_results),
]
