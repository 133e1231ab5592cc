"""The sandbox's state kept in a directory, so that a restarted server is the same provider.

Layout of a state dir::

    state.json                          the snapshot: counters, the time base, file and batch
                                        headers (small); rewritten atomically under the store lock
    files/<file_id>                     each file's content (uploads, outputs), written once
    batches/<batch_id>.requests.json    a batch's request plans (what each request yields), at create
    batches/<batch_id>.lines.json       its result lines (indexes into the plans), when published
    batches/<batch_id>.results.jsonl    an Anthropic batch's results, when published

Large contents are written once each (outside the store lock, before the snapshot that names
them), so a change costs one small snapshot write however big the batches are. Every write is
a temp file + `os.replace`: a killed server leaves the previous or the next state, never half
of one (no fsync: it survives a killed process, not a power cut). One server per state dir.

What a snapshot holds: committed batches (their create answer is sent after it is written),
with their outcome once published. A batch decided but not yet published is saved as still
running, and is decided again, the same way, after a restart. Billing is not stored: it is
rebuilt from the published batches' lines in the order they were published, so it can never
disagree with the results a client downloaded, and nothing is billed twice.

Time: clock readings are saved as positions on the sandbox's own timeline, so a restart with
another clock (another process's monotonic clock, a test's fake clock) carries on where the
state was saved. With the real clock the time the server was down counts as well (batches
keep running while you are away, as at a real provider); with an injected clock it does not
(the test drives time). Wall timestamps (created_at, ended_at ...) are epoch seconds, kept.

Call counters (and the HTTP fault rules counting them) are saved with the next change and
when the server stops; after a crash, calls since the last change are forgotten.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from routellm_batch.sandbox.responders import Answer
from routellm_batch.sandbox.store import BatchRecord, FileRecord, FinalLine, PlannedError, RequestPlan, SandboxStore

__all__ = ["StateDir", "StateError"]

FORMAT = 1


class StateError(ValueError):
    """A state dir that cannot be loaded (unknown format, missing or broken content); names the path."""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


_USAGE_DETAILS = ("cached_input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens")


def _outcome(o: Answer | PlannedError) -> list[Any]:
    if isinstance(o, Answer):
        return ["a", o.text, o.input_tokens, o.output_tokens, o.truncated, *(getattr(o, k) for k in _USAGE_DETAILS),
                o.confidence, o.top_logprobs]
    return ["e", o.kind, o.message]


def _outcome_from(x: list[Any]) -> Answer | PlannedError:
    if x[0] == "a":
        # State saved before the usage details were kept has none: zeros, as it reported then.
        details = {k: int(v) for k, v in zip(_USAGE_DETAILS, x[5:])}
        if len(x) > 9:  # the logprobs asked for (older state has none)
            details.update(confidence=x[9], top_logprobs=int(x[10]))
        return Answer(text=x[1], input_tokens=int(x[2]), output_tokens=int(x[3]), truncated=bool(x[4]), **details)
    return PlannedError(x[1], x[2])


class StateDir:
    """Reads and writes one sandbox's state in `path` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.snapshot = self.path / "state.json"
        self.files_dir = self.path / "files"
        self.batches_dir = self.path / "batches"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.batches_dir.mkdir(parents=True, exist_ok=True)

    # -- contents, written once -----------------------------------------------------------------
    def write_file(self, file_id: str, content: bytes) -> None:
        _write_atomic(self.files_dir / file_id, content)

    def remove_file(self, file_id: str) -> None:
        (self.files_dir / file_id).unlink(missing_ok=True)

    def write_requests(self, batch: BatchRecord) -> None:
        rows = [[p.custom_id, p.model, _outcome(p.outcome), p.est_input_tokens] for p in batch.requests]
        _write_atomic(self.batches_dir / f"{batch.id}.requests.json", _dumps(rows))

    def write_outcome(self, batch: BatchRecord, results: bytes | None) -> None:
        """A decided batch's lines (and Anthropic results), before the snapshot that publishes it."""
        index = {p.custom_id: i for i, p in enumerate(batch.requests)}
        rows = []
        for ln in batch.lines:
            i = index[ln.custom_id]
            own = batch.requests[i].outcome
            # Most lines carry their plan's outcome: store a reference, not the answer text again.
            rows.append([i, ln.processed, None if ln.outcome is own or ln.outcome == own else _outcome(ln.outcome)])
        _write_atomic(self.batches_dir / f"{batch.id}.lines.json", _dumps(rows))
        if results is not None:
            _write_atomic(self.batches_dir / f"{batch.id}.results.jsonl", results)

    # -- the snapshot --------------------------------------------------------------------------
    def save(self, store: SandboxStore) -> None:
        """Write the snapshot of `store` (the caller holds its lock)."""
        data = {
            "format": FORMAT,
            "saved_wall": time.time(),
            "timeline": store.timeline(store.now()),
            "anchor_wall": store._anchor_wall,
            "created": dict(store.created),
            "calls": dict(store.calls),
            "faults_injected": dict(store.faults_injected),
            "rule_counts": [[*k, n] for k, n in store._rule_counts.items()],
            "request_error_uses": [[*k, n] for k, n in store._request_error_uses.items()],
            "call_no": store._call_no,
            "final_no": store._final_no,
            "files": [[f.id, f.filename, f.purpose, f.created_at] for f in store.files.values()],
            "batches": [self._header(store, b) for b in store.batches.values() if b.committed],
        }
        _write_atomic(self.snapshot, _dumps(data))

    @staticmethod
    def _header(store: SandboxStore, b: BatchRecord) -> dict[str, Any]:
        h: dict[str, Any] = {
            "provider": b.provider,
            "id": b.id,
            "seq": b.seq,
            "created_wall": b.created_wall,
            "created": store.timeline(b.created_mono),
            "fate": b.fate,
            "errors": b.errors,
            "metadata": b.metadata,
            "model": b.model,
            "input_file_id": b.input_file_id,
            "endpoint": b.endpoint,
            "completion_window": b.completion_window,
            "malformed_line": b.malformed_line,
            "lost_response": b.lost_response,
            "list_lag": b.list_lag,
            "cancel": store.timeline(b.cancel_mono) if b.cancel_mono is not None else None,
            "cancel_wall": b.cancel_wall,
            "cancel_finished_share": b.cancel_finished_share,
            "deleted": b.deleted,
        }
        if b.published:
            h.update(
                terminal=b.terminal,
                ended_wall=b.ended_wall,
                final_no=b.final_no,
                output_file_id=b.output_file_id,
                error_file_id=b.error_file_id,
                results=b.results is not None,
            )
        return h

    # -- loading -------------------------------------------------------------------------------
    def load_into(self, store: SandboxStore) -> None:
        """Fill an empty `store` from the saved state, if there is one (the caller holds its lock)."""
        if not self.snapshot.exists():
            self._collect_garbage(set(), set())
            return
        try:
            data = json.loads(self.snapshot.read_bytes())
        except ValueError as exc:
            raise StateError(f"{self.snapshot}: not a readable sandbox state ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError(f"{self.snapshot}: unknown sandbox state format (expected format {FORMAT})")
        downtime = max(0.0, time.time() - data["saved_wall"]) if store.real_clock else 0.0
        store.rebase(data["timeline"] + downtime, data["anchor_wall"])
        store.created = Counter(data["created"])
        store.calls = Counter(data["calls"])
        store.faults_injected = Counter(data["faults_injected"])
        store._rule_counts = Counter({(a, b): n for a, b, n in data["rule_counts"]})
        store._request_error_uses = Counter({(a, b): n for a, b, n in data["request_error_uses"]})
        store._call_no = data["call_no"]
        store._final_no = data["final_no"]
        for file_id, filename, purpose, created_at in data["files"]:
            content = self._read(self.files_dir / file_id)
            store.files[file_id] = FileRecord(file_id, filename, purpose, content, created_at)
        for h in data["batches"]:
            batch = self._batch(store, h)
            store.batches[batch.id] = batch
        for batch in sorted((b for b in store.batches.values() if b.published), key=lambda b: b.final_no):
            store.bill_locked(store.billing_records(batch))
        self._collect_garbage(set(store.files), {b.id for b in store.batches.values()})

    def _batch(self, store: SandboxStore, h: dict[str, Any]) -> BatchRecord:
        rows = json.loads(self._read(self.batches_dir / f"{h['id']}.requests.json"))
        plans = [RequestPlan(cid, model, _outcome_from(o), est) for cid, model, o, est in rows]
        b = BatchRecord(
            provider=h["provider"],
            id=h["id"],
            seq=h["seq"],
            created_wall=h["created_wall"],
            created_mono=store.mono_of(h["created"]),
            requests=plans,
            fate=h["fate"],
            errors=h["errors"],
            metadata=h["metadata"],
            model=h["model"],
            input_file_id=h["input_file_id"],
            endpoint=h["endpoint"],
            completion_window=h["completion_window"],
            malformed_line=h["malformed_line"],
            lost_response=h["lost_response"],
            list_lag=h.get("list_lag", False),
            cancel_mono=store.mono_of(h["cancel"]) if h["cancel"] is not None else None,
            cancel_wall=h["cancel_wall"],
            cancel_finished_share=h["cancel_finished_share"],
            deleted=h["deleted"],
            committed=True,
        )
        if "terminal" in h:
            lines = json.loads(self._read(self.batches_dir / f"{b.id}.lines.json"))
            b.lines = [
                FinalLine(plans[i].custom_id, plans[i].model, plans[i].outcome if o is None else _outcome_from(o), processed)
                for i, processed, o in lines
            ]
            b.terminal, b.ended_wall, b.final_no = h["terminal"], h["ended_wall"], h["final_no"]
            b.output_file_id, b.error_file_id = h["output_file_id"], h["error_file_id"]
            if h["results"]:
                b.results = self._read(self.batches_dir / f"{b.id}.results.jsonl")
            b.published = True
        return b

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StateError(f"{path}: named by {self.snapshot} but missing; the state dir is incomplete") from None

    def _collect_garbage(self, file_ids: set[str], batch_ids: set[str]) -> None:
        """Remove temp files and contents no snapshot names (left by a crash between the two writes)."""
        for path in self.files_dir.iterdir():
            if path.name not in file_ids:
                path.unlink(missing_ok=True)
        for path in self.batches_dir.iterdir():
            if path.name.split(".", 1)[0] not in batch_ids:
                path.unlink(missing_ok=True)
        for path in self.path.glob(".*.tmp"):
            path.unlink(missing_ok=True)
