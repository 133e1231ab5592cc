"""The sandbox's state: files, batches, how batches progress over time, faults drawn, billing.

One `threading.Lock` guards everything. Public entry points (the endpoint functions in
openai_api / anthropic_api, and the inspection methods of SandboxServer) take it exactly
once; methods named `*_locked` expect the caller to hold it and never take it themselves.

Batches advance lazily: their state is computed from the creation time, `tick_seconds` per
state step and the clock, whenever someone looks. When a batch is first seen terminal, how it
ended is decided under the lock (cheap); `settle()` then fixes its result lines and renders
its result files OUTSIDE the lock (a 50k-line batch takes seconds) and, under it, bills the
succeeded requests and swaps the files in: only then does the API show the batch as ended
("published"), and only then is it billed, exactly once.

With a `StateDir` attached (`attach_state`), every change is saved: large immutable
contents (files, request plans, result lines) once each, outside the lock where possible,
then the small snapshot atomically while holding the lock (see persistence.py).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from routellm_batch.sandbox.faults import Faults, FaultRule, RequestErrorKind, draw
from routellm_batch.sandbox.responders import Answer, Responder

if TYPE_CHECKING:
    from routellm_batch.sandbox.persistence import StateDir

__all__ = [
    "ApiCall",
    "ApiError",
    "ApiResponse",
    "BatchRecord",
    "BatchSummary",
    "BillingRecord",
    "FileRecord",
    "KEY_MARK",
    "Limits",
    "PlannedError",
    "RequestPlan",
    "Rendered",
    "SandboxStore",
    "TerminalKind",
    "quote_key",
]

Provider = Literal["openai", "anthropic"]
TerminalKind = Literal["completed", "failed", "expired", "cancelled"]
BatchFate = Literal["normal", "validation_failed", "token_limit", "expire"]
ErrorKind = Literal[
    "invalid_request", "authentication", "not_found", "conflict", "request_too_large", "rate_limit", "quota",
    "billing", "api_error", "overloaded",
]
HttpFault = Literal["rate_limit", "server_error", "overloaded", "quota_exceeded"]

# State steps (in ticks after creation) at which a batch ends, per provider and fate:
# OpenAI validating -> in_progress -> finalizing -> completed; Anthropic in_progress -> ended.
_END_STEP: dict[tuple[Provider, BatchFate], int] = {
    ("openai", "normal"): 3,
    ("openai", "expire"): 2,
    ("openai", "validation_failed"): 1,
    ("openai", "token_limit"): 1,
    ("anthropic", "normal"): 2,
    ("anthropic", "expire"): 2,
}
_TERMINAL_OF_FATE: dict[BatchFate, TerminalKind] = {
    "normal": "completed",
    "expire": "expired",
    "validation_failed": "failed",
    "token_limit": "failed",
}


class ApiError(Exception):
    """An HTTP error answer; the server renders it in the calling provider's error shape."""

    def __init__(
        self,
        status: int,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.param, self.code = status, kind, message, param, code
        self.details = details
        """Anthropic's error.details (e.g. {"error_code": "enforced_spend_limit_reached"})."""


@dataclass
class ApiCall:
    """One parsed HTTP request (headers are kept out on purpose: they hold the API key)."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes
    content_type: str
    endpoint: str
    params: dict[str, str]
    base_url: str
    api_key: str = field(default="", repr=False)
    """The caller's key, only to be quoted in answers (Faults.echo_api_key); never stored or logged."""

    def json(self) -> Any:
        import json

        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise ApiError(400, "invalid_request", "request body is not valid JSON") from None


@dataclass
class ApiResponse:
    body: Any = None
    status: int = 200
    content_type: str = "application/json"
    lose: bool = False
    """The lose_create fault: the work is done but the HTTP response must be dropped."""


@dataclass(frozen=True)
class PlannedError:
    kind: RequestErrorKind
    message: str


@dataclass
class RequestPlan:
    custom_id: str
    model: str
    outcome: Answer | PlannedError
    """What processing this request yields (answer, or an error from the params, the responder or a fault)."""
    est_input_tokens: int = 0


@dataclass
class FileRecord:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int


@dataclass(frozen=True)
class FinalLine:
    custom_id: str
    model: str
    outcome: Answer | PlannedError
    processed: bool
    """False for requests that never ran (expired / cancelled before their turn)."""


@dataclass
class BatchRecord:
    provider: Provider
    id: str
    seq: int
    """1-based creation number within its provider (what batch fault rules count)."""
    created_wall: float
    created_mono: float
    requests: list[RequestPlan]
    fate: BatchFate = "normal"
    errors: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI errors.data for a failed batch."""
    metadata: dict[str, str] | None = None
    model: str | None = None
    input_file_id: str | None = None
    endpoint: str | None = None
    completion_window: str | None = None
    malformed_line: bool = False
    lost_response: bool = False
    list_lag: bool = False
    """The list_lag fault: the batch stays out of `list` for Faults.list_lag_seconds after creation."""
    cancel_mono: float | None = None
    cancel_wall: float | None = None
    cancel_finished_share: float = 0.0
    terminal: TerminalKind | None = None
    ended_wall: float | None = None
    lines: list[FinalLine] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: bytes | None = None
    """Anthropic results JSONL, rendered once when the batch ends."""
    deleted: bool = False
    final_no: int = 0
    """Order in which batches were published, i.e. billed (kept across restarts)."""
    committed: bool = False
    """Set once its create has saved its request plans (at once without a state dir): snapshots include it."""
    published: bool = False
    """Its results are rendered and installed: the API shows it ended."""
    rendering: bool = False
    """A thread is rendering its results outside the lock."""

    @property
    def custom_ids(self) -> tuple[str, ...]:
        return tuple(r.custom_id for r in self.requests)


@dataclass(frozen=True)
class BatchSummary:
    """What `SandboxServer.batches()` returns for each batch created."""

    provider: Provider
    id: str
    seq: int
    metadata: dict[str, str] | None
    custom_ids: tuple[str, ...]
    status: str
    """The provider's own status word (OpenAI status / Anthropic processing_status)."""
    model: str | None
    lost_response: bool
    """True when the lose_create fault dropped this batch's create response."""


@dataclass(frozen=True)
class BillingRecord:
    """One billed request and every kind of token it was billed for (the project's vocabulary:
    `input_tokens` all input, the cache counts parts of it; `output_tokens` all output, reasoning a part)."""

    provider: Provider
    custom_id: str
    batch_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class Rendered:
    """A decided batch's result contents, rendered outside the lock by its provider module."""

    output_file: bytes | None = None
    """OpenAI output file (succeeded lines)."""
    error_file: bytes | None = None
    """OpenAI error file (failed / unrun lines)."""
    results: bytes | None = None
    """Anthropic results JSONL."""


@dataclass(frozen=True)
class Limits:
    """Provider limits the sandbox enforces (lower them in tests to exercise sharding)."""

    # "200 MB" / "256 MB" enforced as 10^6-byte megabytes: the stricter reading of the docs, so a
    # client that fits here fits the real API whichever megabyte it means.
    openai_max_requests: int = 50_000
    openai_max_file_bytes: int = 200_000_000
    anthropic_max_requests: int = 100_000
    anthropic_max_bytes: int = 256_000_000


KEY_MARK = "{{api_key}}"
"""Stands for the caller's API key in stored result lines; `quote_key` fills it in per download."""


def quote_key(content: bytes, api_key: str) -> bytes:
    """Result content as the downloader sees it: KEY_MARK replaced by its key (JSON-escaped)."""
    mark = KEY_MARK.encode()
    if mark not in content:
        return content
    return content.replace(mark, json.dumps(api_key)[1:-1].encode())


def new_id(prefix: str, n: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:n]


class SandboxStore:
    def __init__(
        self,
        responder: Responder,
        faults: Faults,
        tick_seconds: float,
        limits: Limits,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if tick_seconds < 0 or not math.isfinite(tick_seconds):
            raise ValueError("tick_seconds must be a finite number >= 0")
        self.lock = threading.Lock()
        self.responder = responder
        self.faults = faults
        self.tick = float(tick_seconds)
        self.limits = limits
        self.clock = clock or time.monotonic
        self.real_clock = clock is None
        self._clock0 = self.clock()
        # The sandbox's own timeline (seconds), which continues across restarts: `_base` is its
        # position at the clock reading `_clock0`, `_anchor_wall` the wall time of its origin.
        self._base = 0.0
        self._anchor_wall = time.time()
        self.files: dict[str, FileRecord] = {}
        self.batches: dict[str, BatchRecord] = {}  # insertion order = creation order
        self.created: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self.billed: Counter[tuple[str, str]] = Counter()
        self.billing: list[BillingRecord] = []
        self._rule_counts: Counter[tuple[str, str]] = Counter()
        self._request_error_uses: Counter[tuple[str, str]] = Counter()
        self._rules = {
            name: faults.rules(name)
            for name in (
                "rate_limit_on",
                "server_error_on",
                "overloaded_on",
                "quota_exceeded_on",
                "list_lag_on",
                "lose_create_on",
                "token_limit_on",
                "validation_failure_on",
                "expire_on",
                "malformed_line_on",
            )
        }
        self.renderers: dict[Provider, Callable[[BatchRecord], Rendered]] = {}
        self._call_no = 0
        self._final_no = 0
        self.state: StateDir | None = None

    # -- time --------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock()

    def wall(self, mono: float) -> float:
        """Wall-clock seconds for a clock reading (consistent with an injected clock)."""
        return self._anchor_wall + self.timeline(mono)

    def timeline(self, mono: float) -> float:
        """A clock reading as a position on the sandbox's timeline (what a saved state holds)."""
        return mono - self._clock0 + self._base

    def mono_of(self, timeline: float) -> float:
        """A timeline position as a reading of this process's clock."""
        return timeline - self._base + self._clock0

    def rebase(self, timeline_now: float, anchor_wall: float) -> None:
        """Continue a saved timeline: the clock's current reading becomes `timeline_now`."""
        self._clock0, self._base, self._anchor_wall = self.now(), timeline_now, anchor_wall

    def steps_since(self, mono: float, now: float) -> float:
        if self.tick <= 0:
            return math.inf
        return (now - mono) / self.tick

    # -- faults ------------------------------------------------------------------------------
    def _rule_fires_locked(self, field_name: str, name: str) -> bool:
        fired = False
        for i, rule in enumerate(self._rules[field_name]):
            if rule.matches(name):
                key = (field_name, str(i))
                self._rule_counts[key] += 1
                fired = rule.fires(self._rule_counts[key]) or fired
        return fired

    def http_fault_locked(self, endpoint: str) -> HttpFault | None:
        """Count the call and decide whether it is answered with an HTTP fault instead."""
        self.calls[endpoint] += 1
        self._call_no += 1
        f = self.faults
        # Every rule sees every call, so that '#n' always means the n-th matching call.
        fired = {
            "quota_exceeded": self._rule_fires_locked("quota_exceeded_on", endpoint),
            "rate_limit": self._rule_fires_locked("rate_limit_on", endpoint),
            "overloaded": self._rule_fires_locked("overloaded_on", endpoint),
            "server_error": self._rule_fires_locked("server_error_on", endpoint),
        }
        if any(FaultRule(g, None, None).matches(endpoint) for g in f.http_fault_endpoints):
            for name in ("rate_limit", "overloaded", "server_error"):
                fired[name] = fired[name] or draw(f.seed, name, self._call_no) < getattr(f, f"{name}_share")
        kind: HttpFault | None = next((k for k, on in fired.items() if on), None)  # type: ignore[assignment]
        if kind:
            self.faults_injected[kind] += 1
        return kind

    def batch_fault_locked(self, field_name: str, provider: str, seq: int) -> bool:
        """Rule (n-th batch of a provider) or share draw for one batch-level fault."""
        fired = self._rule_fires_locked(field_name + "_on", provider)
        share = getattr(self.faults, field_name + "_share")
        return fired or draw(self.faults.seed, field_name, provider, seq) < share

    def request_error_locked(self, provider: str, seq: int, custom_id: str) -> RequestErrorKind | None:
        f = self.faults
        kind = f.request_errors.get(custom_id)
        if kind is not None:
            uses = self._request_error_uses[(provider, custom_id)]
            if f.request_error_times == 0 or uses < f.request_error_times:
                self._request_error_uses[(provider, custom_id)] += 1
                return kind
        if f.request_error_share and draw(f.seed, "request_error", provider, seq, custom_id) < f.request_error_share:
            pick = draw(f.seed, "request_error_kind", provider, seq, custom_id)
            return f.request_error_kinds[int(pick * len(f.request_error_kinds))]
        return None

    def count_fault(self, name: str | None) -> None:
        """Count an injected fault decided outside the lock (None: nothing injected)."""
        if name:
            with self.lock:
                self.faults_injected[name] += 1

    def apply_request_faults_locked(self, provider: Provider, seq: int, plans: list[RequestPlan]) -> None:
        # The key is quoted through a mark filled in at download (`quote_key`): never stored.
        echo = f" (request made with API key {KEY_MARK})" if self.faults.echo_api_key else ""
        for plan in plans:
            kind = self.request_error_locked(provider, seq, plan.custom_id)
            if kind is not None:
                self.faults_injected[f"request_{kind}"] += 1
                plan.outcome = PlannedError(kind, _FAULT_MESSAGES[kind] + echo)

    # -- batches -----------------------------------------------------------------------------
    def add_batch_locked(self, batch: BatchRecord) -> None:
        self.batches[batch.id] = batch

    def list_lag_locked(self, provider: str) -> bool:
        """Whether a new batch of `provider` lags in `list` (rule, or every batch when no rule is set)."""
        fired = self._rule_fires_locked("list_lag_on", provider)
        return self.faults.list_lag_seconds > 0 and (fired or not self._rules["list_lag_on"])

    def listed_locked(self, batch: BatchRecord) -> bool:
        """Whether `list` shows the batch yet (the list_lag fault hides a new one for a while)."""
        return not batch.list_lag or self.now() - batch.created_mono >= self.faults.list_lag_seconds

    def next_seq_locked(self, provider: Provider) -> int:
        self.created[provider] += 1
        return self.created[provider]

    def get_batch_locked(self, provider: Provider, batch_id: str) -> BatchRecord:
        batch = self.batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise ApiError(404, "not_found", f"No batch found with id '{batch_id}'.")
        self.refresh_locked(batch)
        return batch

    def step_locked(self, batch: BatchRecord, now: float | None = None) -> float:
        return self.steps_since(batch.created_mono, self.now() if now is None else now)

    def refresh_locked(self, batch: BatchRecord) -> None:
        """Decide how the batch ended if its time has come (`settle()` then bills and publishes it once)."""
        if batch.terminal is not None:
            return
        now = self.now()
        if batch.cancel_mono is not None:
            if self.steps_since(batch.cancel_mono, now) >= 1:
                self._finalize_locked(batch, "cancelled", batch.cancel_mono + self.tick)
            return
        end = _END_STEP[(batch.provider, batch.fate)]
        if self.step_locked(batch, now) >= end:
            self._finalize_locked(batch, _TERMINAL_OF_FATE[batch.fate], batch.created_mono + end * self.tick)

    def refresh_all_locked(self) -> None:
        for batch in self.batches.values():
            self.refresh_locked(batch)

    def _finalize_locked(self, batch: BatchRecord, terminal: TerminalKind, ended_mono: float) -> None:
        """Decide how the batch ended (cheap, under the lock); `settle()` fixes its lines, bills and publishes it."""
        batch.terminal = terminal
        batch.ended_wall = self.wall(ended_mono)

    def decided_lines(self, batch: BatchRecord) -> list[FinalLine]:
        """The result lines of a decided batch: a pure function of what is fixed once it is decided."""
        terminal = batch.terminal
        if terminal is None or terminal == "failed":
            return []
        # Results come back in a shuffled (seeded) order, never the input order.
        order = list(batch.requests)
        random.Random(draw(self.faults.seed, "order", batch.provider, batch.seq)).shuffle(order)
        if terminal == "completed":
            n_done = len(order)
        elif terminal == "expired":
            n_done = round(self.faults.expire_finished_share * len(order))
        else:
            n_done = round(batch.cancel_finished_share * len(order))
        unfinished = PlannedError(
            "expired" if terminal == "expired" else "canceled",
            _FAULT_MESSAGES["expired" if terminal == "expired" else "canceled"],
        )
        return [
            FinalLine(p.custom_id, p.model, p.outcome if i < n_done else unfinished, i < n_done)
            for i, p in enumerate(order)
        ]

    @staticmethod
    def billing_records(batch: BatchRecord) -> list[BillingRecord]:
        """What a decided batch bills: the requests that ran and succeeded."""
        return [
            BillingRecord(
                batch.provider, ln.custom_id, batch.id, ln.model, ln.outcome.input_tokens, ln.outcome.output_tokens,
                ln.outcome.cached_input_tokens, ln.outcome.cache_write_5m_tokens, ln.outcome.cache_write_1h_tokens,
                ln.outcome.reasoning_tokens,
            )
            for ln in batch.lines
            if ln.processed and isinstance(ln.outcome, Answer)
        ]

    def bill_locked(self, records: list[BillingRecord]) -> None:
        self.billing.extend(records)
        self.billed.update((r.provider, r.custom_id) for r in records)

    # -- publishing and saving ---------------------------------------------------------------
    def settle(self) -> None:
        """Decide every batch whose time has come; fix the lines of decided ones and render their
        results outside the lock; bill and swap them in under it. Each entry point calls this first.

        Work is claimed per batch (`rendering`), so no thread waits for another: a batch still
        being rendered elsewhere shows its pre-terminal status (and is not yet billed) a moment longer.
        """
        with self.lock:
            self.refresh_all_locked()
            jobs = [b for b in self.batches.values() if b.terminal is not None and not b.published and not b.rendering]
            for b in jobs:
                b.rendering = True
        try:
            for batch in jobs:
                self._publish(batch)
        finally:
            with self.lock:  # after an exception the rest are left for the next call
                for b in jobs:
                    b.rendering = False

    def _publish(self, batch: BatchRecord) -> None:
        # Only readers under the lock are the status / counts of a batch not yet published, which
        # may see the lines early: harmless, they are final.
        batch.lines = self.decided_lines(batch)
        records = self.billing_records(batch)
        rendered = self.renderers[batch.provider](batch)
        named = {
            "output_file_id": (f"{batch.id}_output.jsonl", rendered.output_file),
            "error_file_id": (f"{batch.id}_error.jsonl", rendered.error_file),
        }
        ids = {attr: new_id("file-") for attr, (_, content) in named.items() if content is not None}
        if self.state is not None:
            for attr, file_id in ids.items():
                self.state.write_file(file_id, named[attr][1] or b"")
            self.state.write_outcome(batch, rendered.results)
        with self.lock:
            created = int(self.wall(self.now()))
            for attr, file_id in ids.items():
                filename, content = named[attr]
                assert content is not None
                self.files[file_id] = FileRecord(file_id, filename, "batch_output", content, created)
                setattr(batch, attr, file_id)
            batch.results = rendered.results
            self.bill_locked(records)
            self._final_no += 1
            batch.final_no = self._final_no
            batch.published = True
            self.save_locked()

    def attach_state(self, state: StateDir) -> None:
        """Keep this store in `state` from now on, after loading what it holds (if anything)."""
        with self.lock:
            state.load_into(self)
            self.state = state
            self.save_locked()

    def save_locked(self) -> None:
        """Write the snapshot (atomically) if a state dir is attached; call after every change."""
        if self.state is not None:
            self.state.save(self)

    def commit_batch(self, batch: BatchRecord) -> None:
        """Save a just-created batch: its request plans once (outside the lock), then the snapshot.

        The create answer is sent only after this, so a batch id a client has seen survives a restart.
        """
        if self.state is not None:
            self.state.write_requests(batch)
        with self.lock:
            batch.committed = True
            self.save_locked()

    def summary_locked(self, batch: BatchRecord, status: str) -> BatchSummary:
        return BatchSummary(
            provider=batch.provider,
            id=batch.id,
            seq=batch.seq,
            metadata=dict(batch.metadata) if batch.metadata is not None else None,
            custom_ids=batch.custom_ids,
            status=status,
            model=batch.model,
            lost_response=batch.lost_response,
        )

    # -- files -------------------------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, content: bytes) -> FileRecord:
        """Store an uploaded file: its content saved once (outside the lock), then the snapshot."""
        file_id = new_id("file-")
        if self.state is not None:
            self.state.write_file(file_id, content)
        with self.lock:
            record = FileRecord(file_id, filename, purpose, content, int(self.wall(self.now())))
            self.files[record.id] = record
            self.save_locked()
            return record

    def delete_file_locked(self, file_id: str) -> None:
        del self.files[file_id]
        self.save_locked()
        if self.state is not None:
            self.state.remove_file(file_id)  # after the snapshot: a crash leaves an orphan, never a dangling id


_FAULT_MESSAGES: dict[str, str] = {
    "invalid_request": "sandbox fault: this request was rejected as invalid",
    "server_error": "sandbox fault: the server had an error while processing this request",
    "overloaded": "sandbox fault: the engine is currently overloaded, please try again later",
    "expired": "This request could not be executed before the completion window expired.",
    "canceled": "This request was not executed because the batch was cancelled.",
}
