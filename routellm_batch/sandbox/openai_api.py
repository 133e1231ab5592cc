"""The OpenAI Files + Batch API of the sandbox: endpoints, batch objects and result lines.

Each endpoint function takes the store and one parsed call, holds the store lock in
blocks that never nest (the responder runs outside it), and returns an ApiResponse (or raises ApiError). Shapes follow the official SDK's
types (openai.types.Batch, FileObject, ChatCompletion) and docs/provider-batch-apis.md.
"""

from __future__ import annotations

import hashlib
import json
from email.message import Message
from typing import Any

from routellm_batch.sandbox.logprobs import MAX_TOP_LOGPROBS, logprobs_content, with_confidence
from routellm_batch.sandbox.responders import Answer, ChatRequest, PromptCache, UnknownPrompt, prompt_tokens
from routellm_batch.sandbox.structured import structured_answer
from routellm_batch.sandbox.store import (
    ApiCall,
    ApiError,
    ApiResponse,
    BatchRecord,
    FileRecord,
    FinalLine,
    PlannedError,
    Rendered,
    RequestPlan,
    SandboxStore,
    new_id,
    quote_key,
)

__all__ = ["ENDPOINTS", "render", "status_of"]

CHAT_URL = "/v1/chat/completions"
_ROLES = {"system", "developer", "user", "assistant", "tool"}
_MAX_ERRORS = 100
_DAY = 24 * 3600

_HTTP_ERROR_LINES: dict[str, tuple[int, str, str | None]] = {
    # kind -> (status_code, error.type, error.code)
    "invalid_request": (400, "invalid_request_error", None),
    "server_error": (500, "server_error", None),
    "overloaded": (503, "server_error", "engine_overloaded"),
}
_NULL_RESPONSE_CODES = {"expired": "batch_expired", "canceled": "batch_cancelled"}


# -- files ----------------------------------------------------------------------------------
def _file_object(f: FileRecord) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": len(f.content),
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": f.created_at + 30 * _DAY,
        "status_details": None,
    }


def _multipart(call: ApiCall) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, data) for a multipart/form-data body (small parser: the stdlib's cgi is gone)."""
    header = Message()
    header["content-type"] = call.content_type
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise ApiError(400, "invalid_request", "expected a multipart/form-data body with a boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in call.body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = Message()
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            disposition[name.strip()] = value.strip()
        name = disposition.get_param("name", header="content-disposition")
        filename = disposition.get_param("filename", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (filename if isinstance(filename, str) else None, data.removesuffix(b"\r\n"))
    return fields


def files_create(store: SandboxStore, call: ApiCall) -> ApiResponse:
    fields = _multipart(call)
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
    if not purpose:
        raise ApiError(400, "invalid_request", "Missing required parameter: 'purpose'.", param="purpose")
    if purpose != "batch":
        raise ApiError(400, "invalid_request", f"the sandbox supports purpose='batch' only, got {purpose!r}", param="purpose")
    if "file" not in fields:
        raise ApiError(400, "invalid_request", "Missing required parameter: 'file'.", param="file")
    filename, content = fields["file"]
    filename = filename or "upload"
    if not filename.endswith(".jsonl"):
        raise ApiError(400, "invalid_request", "Invalid file format for Batch API. Must be .jsonl", param="file")
    return ApiResponse(_file_object(store.add_file(filename, purpose, content)))


def _get_file_locked(store: SandboxStore, file_id: str) -> FileRecord:
    f = store.files.get(file_id)
    if f is None:
        raise ApiError(404, "not_found", f"No such File object: {file_id}", param="id")
    return f


def files_retrieve(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        return ApiResponse(_file_object(_get_file_locked(store, call.params["id"])))


def files_content(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        f = _get_file_locked(store, call.params["id"])
        return ApiResponse(quote_key(f.content, call.api_key), content_type="application/octet-stream")


def files_delete(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        f = _get_file_locked(store, call.params["id"])
        store.delete_file_locked(f.id)
        return ApiResponse({"id": f.id, "object": "file", "deleted": True})


def files_list(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        items = list(store.files.values())
        if call.query.get("order", "desc") == "desc":
            items.reverse()
        if "purpose" in call.query:
            items = [f for f in items if f.purpose == call.query["purpose"]]
        page, has_more = _page(items, call.query.get("after"), call.query.get("limit"), 10_000, lambda f: f.id)
        data = [_file_object(f) for f in page]
        return ApiResponse(_list_body(data, has_more))


# -- batches --------------------------------------------------------------------------------
def _page(items: list[Any], after: str | None, limit: str | None, max_limit: int, key: Any) -> tuple[list[Any], bool]:
    try:
        n = int(limit) if limit is not None else 20
    except ValueError:
        raise ApiError(400, "invalid_request", f"limit: expected an integer, got {limit!r}", param="limit") from None
    if not 1 <= n <= max_limit:
        raise ApiError(400, "invalid_request", f"limit must be between 1 and {max_limit}", param="limit")
    start = 0
    if after:
        ids = [key(x) for x in items]
        if after not in ids:
            raise ApiError(400, "invalid_request", f"after: no object with id {after!r}", param="after")
        start = ids.index(after) + 1
    page = items[start : start + n]
    return page, start + n < len(items)


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _validate_metadata(metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ApiError(400, "invalid_request", "metadata must be an object of string pairs", param="metadata")
    if len(metadata) > 16:
        raise ApiError(400, "invalid_request", f"metadata: at most 16 pairs, got {len(metadata)}", param="metadata")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise ApiError(400, "invalid_request", f"metadata[{k!r}]: values must be strings", param="metadata")
        if len(k) > 64:
            raise ApiError(400, "invalid_request", f"metadata key {k[:64]!r}...: longer than 64 characters", param="metadata")
        if len(v) > 512:
            raise ApiError(400, "invalid_request", f"metadata[{k!r}]: value longer than 512 characters", param="metadata")
    return dict(metadata)


def _text(content: Any, where: str) -> str:
    """A message content (a string, or a list of parts with text) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise ValueError(f"{where}[{i}]: only text parts are supported by the sandbox")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ValueError(f"{where}: expected a string or a list of text parts")


def _chat_request(body: dict[str, Any]) -> ChatRequest:
    """The neutral request, or ValueError naming the offending parameter (-> a 400 result line)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' is a required property and must be a non-empty array")
    pairs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise ValueError(f"messages[{i}].role: expected one of {sorted(_ROLES)}")
        pairs.append((str(m["role"]), _text(m.get("content"), f"messages[{i}].content")))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ValueError("max_tokens: expected an integer >= 1")
    logprobs, top = body.get("logprobs", False), body.get("top_logprobs")
    if not isinstance(logprobs, bool):
        raise ValueError("logprobs: expected a boolean")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise ValueError(f"top_logprobs: expected an integer from 0 to {MAX_TOP_LOGPROBS}")
    if top is not None and not logprobs:
        raise ValueError("top_logprobs: logprobs must be set to true if top_logprobs is used")
    cache_key = body.get("prompt_cache_key")
    if cache_key is not None and not isinstance(cache_key, str):
        raise ValueError("prompt_cache_key: expected a string")
    system = [t for r, t in pairs if r in ("system", "developer")]
    return ChatRequest(
        provider="openai",
        model=str(body["model"]),
        messages=tuple((r, t) for r, t in pairs if r not in ("system", "developer")),
        system="\n".join(system) if system else None,
        max_tokens=max_tokens,
        logprobs=logprobs,
        top_logprobs=top or 0,
        answer_schema=_answer_schema(body.get("response_format")),
        prompt_cache_key=cache_key,
    )


def _answer_schema(response_format: Any) -> str | None:
    """The schema of `response_format: {type: json_schema, json_schema: {name, schema, strict}}`, as JSON text."""
    if response_format is None or (isinstance(response_format, dict) and response_format.get("type") == "text"):
        return None
    spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
    if response_format.get("type") != "json_schema" or not isinstance(spec, dict):  # type: ignore[union-attr]
        raise ValueError("response_format: the sandbox supports {type: text} and {type: json_schema, json_schema: {...}}")
    if not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        raise ValueError("response_format.json_schema: 'name' (a string) and 'schema' (an object) are required")
    return json.dumps(spec["schema"])


def _parse_input(store: SandboxStore, content: bytes, endpoint: str) -> tuple[list[RequestPlan], list[dict[str, Any]], str | None]:
    """Plans for each line plus file-level validation errors (errors.data entries) and the model."""
    errors: list[dict[str, Any]] = []
    plans: list[RequestPlan] = []
    model: str | None = None
    seen: set[str] = set()
    cache = PromptCache()

    def err(code: str, message: str, line: int | None, param: str | None = None) -> None:
        if len(errors) < _MAX_ERRORS:
            errors.append({"code": code, "message": message, "param": param, "line": line})

    if len(content) > store.limits.openai_max_file_bytes:
        err("file_too_large", f"The input file is larger than the {store.limits.openai_max_file_bytes} bytes limit.", None)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        err("invalid_file_format", "The input file is not UTF-8 encoded JSONL.", None)
        return plans, errors, model
    lines = [(i, raw) for i, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not lines:
        err("empty_file", "The input file contains no requests.", None)
    if len(lines) > store.limits.openai_max_requests:
        err("too_many_requests", f"The batch has {len(lines)} requests; the limit is {store.limits.openai_max_requests}.", None)
    for no, raw in lines:
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            err("invalid_json_line", "This line is not parseable as valid JSON.", no)
            continue
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            err("missing_required_parameter", "Missing required parameter: 'custom_id'.", no, "custom_id")
            continue
        if cid in seen:
            err("duplicate_custom_id", f"The custom_id {cid!r} is a duplicate of another request in this batch.", no, "custom_id")
            continue
        seen.add(cid)
        if obj.get("method") != "POST":
            err("invalid_method", "The method of each request must be 'POST'.", no, "method")
        if obj.get("url") != endpoint:
            err("invalid_url", f"The url of each request must match the batch endpoint {endpoint!r}.", no, "url")
        body = obj.get("body")
        if not isinstance(body, dict):
            err("missing_required_parameter", "Missing required parameter: 'body'.", no, "body")
            continue
        line_model = body.get("model")
        if not isinstance(line_model, str) or not line_model:
            err("missing_required_parameter", "Missing required parameter: 'body.model'.", no, "body.model")
            continue
        if model is None:
            model = line_model
        elif line_model != model:
            err("mismatched_model", f"Every request in a batch must use the same model ({model!r}); this line uses {line_model!r}.", no, "body.model")
            continue
        try:
            request = _chat_request(body)
        except ValueError as exc:
            plans.append(RequestPlan(cid, line_model, PlannedError("invalid_request", str(exc))))
            continue
        try:
            answer, broken = structured_answer(request, store.responder.respond(request), cid, store.faults)
            store.count_fault(broken and f"unparsable_{broken}")
            answer = with_confidence(request, answer, store.responder)
            outcome: Answer | PlannedError = cache.apply(request, answer)
        except UnknownPrompt as exc:
            outcome = PlannedError("invalid_request", str(exc))
        plans.append(RequestPlan(cid, line_model, outcome, prompt_tokens(request)))
    return plans, errors, model


def _open_enqueued_tokens_locked(store: SandboxStore, model: str) -> int:
    store.refresh_all_locked()
    return sum(
        sum(p.est_input_tokens for p in b.requests)
        for b in store.batches.values()
        if b.provider == "openai" and b.model == model and b.terminal is None and b.fate in ("normal", "expire")
    )


def batches_create(store: SandboxStore, call: ApiCall) -> ApiResponse:
    body = call.json()
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str):
            raise ApiError(400, "invalid_request", f"Missing required parameter: '{name}'.", param=name)
    if body["endpoint"] != CHAT_URL:
        raise ApiError(400, "invalid_request", f"the sandbox supports endpoint {CHAT_URL!r} only", param="endpoint")
    if body["completion_window"] != "24h":
        raise ApiError(400, "invalid_request", "completion_window: only '24h' is supported", param="completion_window")
    metadata = _validate_metadata(body.get("metadata"))
    with store.lock:
        f = store.files.get(body["input_file_id"])
        if f is None or f.purpose != "batch":
            raise ApiError(400, "invalid_request", f"Invalid input_file_id {body['input_file_id']!r}: no batch input file with that id.", param="input_file_id")
        content = f.content
    # The responder runs outside the lock: it may take a while on a big file.
    plans, errors, model = _parse_input(store, content, body["endpoint"])
    with store.lock:
        seq = store.next_seq_locked("openai")
        now = store.now()
        # Every rule is evaluated for every batch so that '#n' always means the n-th batch.
        invalid = store.batch_fault_locked("validation_failure", "openai", seq)
        token_fault = store.batch_fault_locked("token_limit", "openai", seq)
        expire = store.batch_fault_locked("expire", "openai", seq)
        lose = store.batch_fault_locked("lose_create", "openai", seq)
        malformed = store.batch_fault_locked("malformed_line", "openai", seq)
        list_lag = store.list_lag_locked("openai")
        batch = BatchRecord(
            provider="openai",
            id=new_id("batch_", 32),
            seq=seq,
            created_wall=store.wall(now),
            created_mono=now,
            requests=plans,
            metadata=metadata,
            model=model,
            input_file_id=f.id,
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            malformed_line=malformed,
            lost_response=lose,
            list_lag=list_lag,
        )
        limit = store.faults.enqueued_token_limit
        if errors:
            batch.fate, batch.errors = "validation_failed", errors
        elif invalid:
            store.faults_injected["validation_failure"] += 1
            batch.fate = "validation_failed"
            batch.errors = [{"code": "invalid_request", "message": "sandbox fault: the input file failed validation.", "param": "body", "line": 1}]
        elif token_fault or (
            limit is not None
            and model is not None
            and _open_enqueued_tokens_locked(store, model) + sum(p.est_input_tokens for p in plans) > limit
        ):
            store.faults_injected["token_limit_exceeded"] += 1
            batch.fate = "token_limit"
            batch.errors = [
                {
                    "code": "token_limit_exceeded",
                    "message": f"Enqueued token limit reached for {model} in organization org-sandbox. "
                    f"Limit: {limit if limit is not None else 90000} enqueued tokens. "
                    "Please try again once some in_progress batches have been completed.",
                    "param": None,
                    "line": None,
                }
            ]
        elif expire:
            store.faults_injected["expire"] += 1
            batch.fate = "expire"
        if batch.fate in ("normal", "expire"):
            store.apply_request_faults_locked("openai", seq, plans)
        if malformed:
            store.faults_injected["malformed_line"] += 1
        if lose:
            store.faults_injected["lose_create"] += 1
        store.add_batch_locked(batch)
        # The create answer shows the first state, as the real API's does, whatever the tick.
        response = ApiResponse(batch_object(store, batch, just_created=True), lose=lose)
    store.commit_batch(batch)
    return response


def status_of(store: SandboxStore, batch: BatchRecord) -> str:
    """The OpenAI status word (the caller has refreshed the batch under the lock).

    A batch decided but not yet published (results being rendered) keeps its last status.
    """
    if batch.published:
        assert batch.terminal is not None
        return batch.terminal
    if batch.cancel_mono is not None:
        return "cancelling"
    step = store.step_locked(batch)
    if step < 1 or batch.fate in ("validation_failed", "token_limit"):
        return "validating"
    if step < 2 or batch.fate == "expire":
        return "in_progress"
    return "finalizing"


def batch_object(store: SandboxStore, b: BatchRecord, just_created: bool = False) -> dict[str, Any]:
    status = "validating" if just_created else status_of(store, b)
    created = b.created_wall
    # How far the batch got (a cancel freezes its progress).
    reached = 0.0 if just_created else store.steps_since(b.created_mono, b.cancel_mono if b.cancel_mono is not None else store.now())
    tick = store.tick

    def at(step: int) -> int | None:
        return int(created + step * tick) if reached >= step else None

    ok_lines = [ln for ln in b.lines if ln.processed and isinstance(ln.outcome, Answer)]
    answers = [ln.outcome for ln in ok_lines if isinstance(ln.outcome, Answer)]
    usage_in = sum(a.input_tokens for a in answers)
    usage_out = sum(a.output_tokens for a in answers)
    failed = b.fate in ("validation_failed", "token_limit")
    ended = int(b.ended_wall) if b.ended_wall is not None else None
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": {"object": "list", "data": b.errors} if b.errors and status == "failed" else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": int(created),
        "in_progress_at": None if failed else at(1),
        "expires_at": int(created + _DAY),
        "finalizing_at": at(2) if b.fate == "normal" else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": ended if status == "failed" else None,
        "expired_at": ended if status == "expired" else None,
        "cancelling_at": int(b.cancel_wall) if b.cancel_wall is not None else None,
        "cancelled_at": ended if status == "cancelled" else None,
        "request_counts": {
            "total": 0 if failed else len(b.requests),
            "completed": len(ok_lines),
            "failed": len(b.lines) - len(ok_lines),
        },
        "usage": {
            "input_tokens": usage_in,
            "input_tokens_details": {"cached_tokens": sum(a.cached_input_tokens for a in answers)},
            "output_tokens": usage_out,
            "output_tokens_details": {"reasoning_tokens": sum(a.reasoning_tokens for a in answers)},
            "total_tokens": usage_in + usage_out,
        },
        "metadata": b.metadata,
    }


def batches_retrieve(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        return ApiResponse(batch_object(store, store.get_batch_locked("openai", call.params["id"])))


def batches_list(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        store.refresh_all_locked()
        newest_first = [b for b in reversed(store.batches.values()) if b.provider == "openai" and store.listed_locked(b)]
        page, has_more = _page(newest_first, call.query.get("after"), call.query.get("limit"), 100, lambda b: b.id)
        return ApiResponse(_list_body([batch_object(store, b) for b in page], has_more))


def batches_cancel(store: SandboxStore, call: ApiCall) -> ApiResponse:
    with store.lock:
        b = store.get_batch_locked("openai", call.params["id"])
        status = status_of(store, b)
        if status in ("completed", "failed", "expired"):
            # What the real API answers (openai.ConflictError), not a 400.
            raise ApiError(409, "conflict", f"Cannot cancel a batch with status '{status}'.")
        # A batch already decided (results being rendered) ends as decided: the cancel came too late.
        if b.cancel_mono is None and b.terminal is None:
            now = store.now()
            b.cancel_mono, b.cancel_wall = now, store.wall(now)
            b.cancel_finished_share = 0.0 if status == "validating" else store.faults.cancel_finished_share
            if b.fate == "validation_failed" or b.fate == "token_limit":
                b.fate = "normal"  # cancelled before validation ended: it is just cancelled
            store.save_locked()
    store.settle()  # with tick 0 the cancel ends at once: answer with the ended batch
    with store.lock:
        return ApiResponse(batch_object(store, store.get_batch_locked("openai", b.id)))


# -- results --------------------------------------------------------------------------------
def _hex(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _line(b: BatchRecord, ln: FinalLine, created: int) -> dict[str, Any]:
    line_id = "batch_req_" + _hex(b.id, ln.custom_id)[:32]
    request_id = "req_" + _hex("req", b.id, ln.custom_id)[:32]
    o = ln.outcome
    if isinstance(o, Answer):
        body = {
            "id": "chatcmpl-" + _hex("chat", b.id, ln.custom_id)[:29],
            "object": "chat.completion",
            "created": created,
            "model": ln.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": o.text, "refusal": None, "annotations": []},
                    "logprobs": None if o.confidence is None else {
                        "content": logprobs_content(o.text, o.confidence, o.top_logprobs), "refusal": None},
                    "finish_reason": "length" if o.truncated else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": o.input_tokens,
                "completion_tokens": o.output_tokens,
                "total_tokens": o.input_tokens + o.output_tokens,
                "prompt_tokens_details": {"cached_tokens": o.cached_input_tokens, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": o.reasoning_tokens,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_sandbox",
        }
        return {"id": line_id, "custom_id": ln.custom_id, "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}
    if o.kind in _NULL_RESPONSE_CODES:
        return {"id": line_id, "custom_id": ln.custom_id, "response": None, "error": {"code": _NULL_RESPONSE_CODES[o.kind], "message": o.message}}
    status, etype, code = _HTTP_ERROR_LINES[o.kind]
    error = {"message": o.message, "type": etype, "param": None, "code": code}
    return {"id": line_id, "custom_id": ln.custom_id, "response": {"status_code": status, "request_id": request_id, "body": {"error": error}}, "error": None}


def _jsonl(rows: list[str]) -> bytes:
    return "".join(r + "\n" for r in rows).encode()


def render(store: SandboxStore, b: BatchRecord) -> Rendered:
    """The output and error files of a decided batch (no lock held: reads only the decided lines)."""
    if b.terminal == "failed":
        return Rendered()
    created = int(b.ended_wall or b.created_wall)
    ok: list[str] = []
    bad: list[str] = []
    for ln in b.lines:
        row = json.dumps(_line(b, ln, created), ensure_ascii=False)
        (ok if isinstance(ln.outcome, Answer) else bad).append(row)
    if b.malformed_line:
        # A truncated copy of a real line, in the middle: what a broken download looks like.
        target = ok if ok else bad
        if target:
            target.insert(len(target) // 2, target[0][: max(1, len(target[0]) // 2)])
    return Rendered(output_file=_jsonl(ok) if ok else None, error_file=_jsonl(bad) if bad else None)


ENDPOINTS = [
    ("POST", r"/v1/files", "openai.files.create", files_create),
    ("GET", r"/v1/files", "openai.files.list", files_list),
    ("GET", r"/v1/files/(?P<id>[^/]+)", "openai.files.retrieve", files_retrieve),
    ("DELETE", r"/v1/files/(?P<id>[^/]+)", "openai.files.delete", files_delete),
    ("GET", r"/v1/files/(?P<id>[^/]+)/content", "openai.files.content", files_content),
    ("POST", r"/v1/batches", "openai.batches.create", batches_create),
    ("GET", r"/v1/batches", "openai.batches.list", batches_list),
    ("GET", r"/v1/batches/(?P<id>[^/]+)", "openai.batches.retrieve", batches_retrieve),
    ("POST", r"/v1/batches/(?P<id>[^/]+)/cancel", "openai.batches.cancel", batches_cancel),
]
