"""A local HTTP server that speaks the OpenAI Files/Batch API and the Anthropic Message
Batches API well enough for the official SDKs to run against it with `base_url`.

In-process use (tests, demos)::

    with SandboxServer(responder=SyntheticResponder(seed=0), faults=Faults(), tick_seconds=0.2) as srv:
        OpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0)   # http://127.0.0.1:PORT/v1
        Anthropic(base_url=srv.anthropic_base_url, api_key="x")           # http://127.0.0.1:PORT
        srv.billed()        # {(provider, custom_id): times billed}: proves nothing was paid twice
        srv.billing()       # one BillingRecord per billed request, with its token usage
        srv.billed_tokens() # {(provider, model): {requests, input_tokens, output_tokens}}
        srv.batches()       # [BatchSummary(provider, id, seq, metadata, custom_ids, status, model, lost_response)]
        srv.stats()         # calls per endpoint, faults injected, batches created, requests billed

`start()` / `stop()` work too. The server binds 127.0.0.1 only (port 0 = a free port).
Batches advance lazily, one state step per `tick_seconds` (0 = done at once): OpenAI
validating -> in_progress -> finalizing -> completed (3 ticks), Anthropic in_progress -> ended
(2 ticks); a cancel ends one tick later. `clock` (a monotonic-seconds callable) can be
injected to drive time by hand. Every call needs an API key header (`Authorization: Bearer`
or `x-api-key`), any non-empty value (but `Faults.rejected_api_keys`): it is never stored or
logged, but quoted back in error answers as real providers can (`Faults.echo_api_key`).
What goes wrong is set by `Faults` (see faults.py); answers come from a responder
(`SyntheticResponder`, `ReplayResponder`, see responders.py).

State lives in memory, and with `state_dir=PATH` also in that directory: every change (file
uploaded or deleted, batch created, cancelled, ended, billed) is saved, and a server started
on the same directory carries on with the same files, batches (ids, states, results), billing
and counters, with whatever responder, faults and clock it is given (see persistence.py).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from routellm_batch.sandbox import anthropic_api, openai_api
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.persistence import StateDir, StateError
from routellm_batch.sandbox.responders import ReplayResponder, Responder, SyntheticResponder
from routellm_batch.sandbox.store import (
    ApiCall,
    ApiError,
    ApiResponse,
    BatchSummary,
    BillingRecord,
    Limits,
    SandboxStore,
    new_id,
)

if TYPE_CHECKING:
    from routellm_batch.config import SandboxSettings

__all__ = [
    "BatchSummary",
    "BillingRecord",
    "Faults",
    "Limits",
    "ReplayResponder",
    "StateError",
    "SandboxServer",
    "SyntheticResponder",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_ROUTES = [
    (method, re.compile(f"^{pattern}$"), endpoint, func)
    for method, pattern, endpoint, func in openai_api.ENDPOINTS + anthropic_api.ENDPOINTS
]

# Neutral error kind -> (OpenAI error.type, Anthropic error.type).
_ERROR_TYPES = {
    "invalid_request": ("invalid_request_error", "invalid_request_error"),
    "authentication": ("invalid_request_error", "authentication_error"),
    "not_found": ("invalid_request_error", "not_found_error"),
    "conflict": ("invalid_request_error", "conflict_error"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("requests", "rate_limit_error"),
    "quota": ("insufficient_quota", "rate_limit_error"),
    "billing": ("insufficient_quota", "billing_error"),
    "api_error": ("server_error", "api_error"),
    "overloaded": ("server_error", "overloaded_error"),
}

# Anthropic's three ways of saying "quota used up" (Faults.anthropic_quota_shape): (status, kind, message, details).
_ANTHROPIC_QUOTA: dict[str, tuple[int, Any, str, dict[str, str] | None]] = {
    "spend_cap": (
        429, "quota", "You have reached your usage tier's monthly spend limit. Usage resumes on the first of next month.",
        {"error_code": "enforced_spend_limit_reached"},
    ),
    "spend_limit": (
        400, "invalid_request", "You have reached your specified API usage limits. You will regain access on the first of next month.",
        None,
    ),
    "credit": (
        402, "billing", "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
        None,
    ),
}  # fmt: skip


def _provider_of(path: str) -> str:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def _api_key(headers: Any, provider: str) -> str:
    """The credential header's value ("" when absent): only quoted back in answers, never kept."""
    bearer = headers.get("Authorization", "")
    if bearer.lower().startswith("bearer ") and bearer[7:].strip():
        return bearer[7:].strip()
    return headers.get("x-api-key", "").strip() if provider == "anthropic" else ""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: _App) -> None:
        self.app = app
        # Open client connections, so that stop() can end idle keep-alive threads. This lock only
        # guards the set; it is never held together with the state lock.
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs (the SDKs pool connections)
    server_version = "routellm-batch-sandbox"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection ends after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        self.server.app.handle(self)  # type: ignore[attr-defined]

    do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # _App.handle logs method, path and status itself (never headers)


class _App:
    """Routing, authentication, HTTP faults and error rendering around the store."""

    def __init__(self, store: SandboxStore, base_url: Callable[[], str]) -> None:
        self.store = store
        self.base_url = base_url
        self.max_body = max(store.limits.anthropic_max_bytes, store.limits.openai_max_file_bytes) + 4 * 1024 * 1024

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        path = split.path.rstrip("/") or "/"
        provider = _provider_of(path)
        endpoint = "unknown"
        extra_headers: dict[str, str] = {}
        api_key = _api_key(h.headers, provider)
        faults = self.store.faults
        try:
            body = self._read_body(h)
            if not api_key:
                raise ApiError(
                    401,
                    "authentication",
                    "x-api-key header is required"
                    if provider == "anthropic"
                    else "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            if api_key in faults.rejected_api_keys:
                raise ApiError(
                    401,
                    "authentication",
                    "invalid x-api-key"
                    if provider == "anthropic"
                    else f"Incorrect API key provided: {api_key}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                )
            route = self._route(h.command, path)
            endpoint, func, params = route
            if provider == "anthropic" and not h.headers.get("anthropic-version"):
                raise ApiError(400, "invalid_request", "anthropic-version: header is required")
            with self.store.lock:
                fault = self.store.http_fault_locked(endpoint)
            if fault == "quota_exceeded":
                if provider == "anthropic":
                    status, kind, message, details = _ANTHROPIC_QUOTA[faults.anthropic_quota_shape]
                    raise ApiError(status, kind, message, details=details)
                raise ApiError(
                    429, "quota", "sandbox fault: You exceeded your current quota, please check your plan and billing details.",
                    code="insufficient_quota",
                )  # fmt: skip
            if fault == "rate_limit":
                extra_headers = self._retry_after()
                raise ApiError(429, "rate_limit", "sandbox fault: rate limit reached, please retry later", code="rate_limit_exceeded")
            if fault == "overloaded":
                extra_headers = self._retry_after()
                if provider == "anthropic":
                    raise ApiError(529, "overloaded", "sandbox fault: Overloaded")
                raise ApiError(503, "overloaded", "sandbox fault: the engine is currently overloaded, please try again later")
            if fault == "server_error":
                raise ApiError(500, "api_error", "sandbox fault: the server had an error while processing your request")
            # Batches whose time has come end (and their results are rendered) before anyone looks.
            self.store.settle()
            call = ApiCall(
                method=h.command,
                path=path,
                query=dict(parse_qsl(split.query)),
                body=body,
                content_type=h.headers.get("Content-Type", ""),
                endpoint=endpoint,
                params=params,
                base_url=self.base_url(),
                api_key=api_key,
            )
            response = func(self.store, call)
        except ApiError as exc:
            response = self._error(exc, provider, api_key if faults.echo_api_key else "")
        except Exception:
            log.exception("sandbox: internal error on %s %s", h.command, path)
            response = self._error(ApiError(500, "api_error", "sandbox internal error"), provider)
        if response.lose:
            if self.store.faults.lose_create_mode == "disconnect":
                log.debug("sandbox: %s %s -> response dropped (lose_create)", h.command, path)
                h.close_connection = True
                return
            response = self._error(
                ApiError(500, "api_error", "The server had an error while processing your request."), provider
            )
        self._send(h, response, provider, extra_headers)
        log.debug("sandbox: %s %s -> %d (%s)", h.command, path, response.status, endpoint)

    def _route(self, method: str, path: str) -> tuple[str, Any, dict[str, str]]:
        allowed = False
        for m, pattern, endpoint, func in _ROUTES:
            match = pattern.match(path)
            if match:
                if m == method:
                    return endpoint, func, match.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, "invalid_request", f"Method {method} not allowed for {path}")
        raise ApiError(404, "not_found", f"Unknown request URL: {method} {path}")

    def _retry_after(self) -> dict[str, str]:
        seconds = self.store.faults.retry_after_seconds
        return {"Retry-After": str(max(0, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in h.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size_line = h.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    h.close_connection = True
                    raise ApiError(400, "invalid_request", "malformed chunked request body") from None
                if size == 0:
                    while h.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > self.max_body:
                    h.close_connection = True
                    raise ApiError(413, "request_too_large", "request body too large")
                chunks.append(h.rfile.read(size))
                h.rfile.readline(1024)
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            h.close_connection = True
            raise ApiError(400, "invalid_request", "bad Content-Length") from None
        if length > self.max_body:
            h.close_connection = True
            raise ApiError(413, "request_too_large", "request body too large")
        return h.rfile.read(length) if length > 0 else b""

    @staticmethod
    def _error(exc: ApiError, provider: str, echo_key: str = "") -> ApiResponse:
        openai_type, anthropic_type = _ERROR_TYPES[exc.kind]
        message = exc.message
        if echo_key and echo_key not in message:
            message += f" (request made with API key {echo_key})"
        if provider == "anthropic":
            error: dict[str, Any] = {"type": anthropic_type, "message": message}
            if exc.details:
                error["details"] = exc.details
            body: dict[str, Any] = {"type": "error", "error": error}
        else:
            body = {"error": {"message": message, "type": openai_type, "param": exc.param, "code": exc.code}}
        return ApiResponse(body, status=exc.status)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, response: ApiResponse, provider: str, extra: dict[str, str]) -> None:
        import json

        if isinstance(response.body, bytes):
            payload = response.body
        else:
            payload = json.dumps(response.body, ensure_ascii=False).encode()
        request_id = new_id("req_")
        if provider == "anthropic" and isinstance(response.body, dict) and response.body.get("type") == "error":
            response.body["request_id"] = request_id
            payload = json.dumps(response.body, ensure_ascii=False).encode()
        h.send_response(response.status)
        h.send_header("Content-Type", response.content_type)
        h.send_header("Content-Length", str(len(payload)))
        h.send_header("request-id" if provider == "anthropic" else "x-request-id", request_id)
        for k, v in extra.items():
            h.send_header(k, v)
        if h.close_connection:
            h.send_header("Connection", "close")
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)


class SandboxServer:
    """The sandbox batch-API server; see the module docstring."""

    def __init__(
        self,
        responder: Responder | None = None,
        faults: Faults | None = None,
        tick_seconds: float = 0.2,
        port: int = 0,
        *,
        limits: Limits | None = None,
        clock: Callable[[], float] | None = None,
        state_dir: str | Path | None = None,
    ) -> None:
        """`state_dir`: keep the state there across restarts (loaded now if present); None = memory only.

        Raises StateError when the directory holds a state that cannot be loaded.
        """
        self._store = SandboxStore(
            responder if responder is not None else SyntheticResponder(),
            faults if faults is not None else Faults(),
            tick_seconds,
            limits if limits is not None else Limits(),
            clock,
        )
        self._store.renderers = {
            "openai": functools.partial(openai_api.render, self._store),
            "anthropic": functools.partial(anthropic_api.render, self._store),
        }
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            self._store.attach_state(StateDir(self.state_dir))
        self._requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: SandboxSettings, port: int | None = None) -> SandboxServer:
        """Build from the run config's `sandbox:` section (responder, faults, tick, port, state dir)."""
        responder: Responder
        if settings.responder == "replay":
            if not settings.replay_uri:
                raise ValueError("sandbox.replay_uri: required when sandbox.responder is 'replay'")
            responder = ReplayResponder.load(settings.replay_uri, settings.replay_model_aliases)
        elif settings.responder == "task":
            from routellm_batch.sandbox.tasks import TaskResponder

            responder = TaskResponder(weak_models=frozenset(settings.task_weak_models), seed=settings.seed)
        else:
            responder = SyntheticResponder(seed=settings.seed)
        return cls(
            responder=responder,
            faults=Faults.from_dict(settings.faults, "sandbox.faults"),
            tick_seconds=settings.tick_seconds,
            port=settings.port if port is None else port,
            state_dir=settings.state_dir,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> SandboxServer:
        if self._httpd is not None:
            raise RuntimeError("sandbox server already started")
        self._httpd = _HTTPServer((HOST, self._requested_port), _App(self._store, lambda: self.anthropic_base_url))
        self._thread = threading.Thread(
            # A short poll interval: stop() waits for at most one interval.
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        log.info("sandbox: serving on %s", self.anthropic_base_url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        try:
            with self._store.lock:
                self._store.save_locked()  # the call counters, which are otherwise saved with the next change
        except OSError as exc:  # every change is saved already: only the latest call counts are lost
            log.warning("sandbox: could not save the final state to %s: %s", self.state_dir, exc)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("sandbox server not started")
        return int(self._httpd.server_address[1])

    @property
    def anthropic_base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def faults(self) -> Faults:
        return self._store.faults

    # -- inspection (each takes the lock once) ---------------------------------------------------
    def billed(self) -> dict[tuple[str, str], int]:
        """(provider, custom_id) -> how many times that request was billed (succeeded results)."""
        self._store.settle()
        with self._store.lock:
            return dict(self._store.billed)

    def billing(self) -> list[BillingRecord]:
        """Every billed request with its batch, model and token usage, in billing order."""
        self._store.settle()
        with self._store.lock:
            return list(self._store.billing)

    def billed_tokens(self) -> dict[tuple[str, str], dict[str, int]]:
        """(provider, model) -> requests, input_tokens, output_tokens billed."""
        self._store.settle()
        with self._store.lock:
            records = list(self._store.billing)
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for r in records:
            t = totals.setdefault((r.provider, r.model), {"requests": 0, "input_tokens": 0, "output_tokens": 0})
            t["requests"] += 1
            t["input_tokens"] += r.input_tokens
            t["output_tokens"] += r.output_tokens
        return totals

    def batches(self) -> list[BatchSummary]:
        """Every batch created so far (lost creates and deleted ones included), oldest first."""
        self._store.settle()
        with self._store.lock:
            out = []
            for b in self._store.batches.values():
                api = openai_api if b.provider == "openai" else anthropic_api
                out.append(self._store.summary_locked(b, api.status_of(self._store, b)))
            return out

    def stats(self) -> dict[str, Any]:
        self._store.settle()
        with self._store.lock:
            return {
                "calls": dict(self._store.calls),
                "faults_injected": dict(self._store.faults_injected),
                "batches_created": dict(self._store.created),
                "requests_billed": sum(self._store.billed.values()),
                "files": len(self._store.files),
            }
