"""The run ledger: one JSON record per shard, rewritten whole and atomically at every transition.

Layout (on any pyarrow.fs filesystem: local paths, file://, s3://, s3a://, gs://, hdfs://):

    <output_root>/ledger/run_date=<D>/
        <shard_id>.json                 the shard's record (state, batch id, times, history)
        plans/<lane>-a<attempt>.json    written once every shard of that plan has its record; lane =
                                        <queue> for plan version 1, <queue>_v<N> for the rows a
                                        re-split added (version N), see `Ledger.lane`
        shards/<shard_id>.jsonl         the shard input exactly as sent (one request per line)
        shards/<shard_id>.map.parquet   custom_id -> prompt_id (+ est tokens), in input order
        results/<shard_id>/<source>.jsonl  raw provider result files (output, errors / results), kept
        outcomes/<shard_id>.parquet     one parsed outcome per request of the shard
        outcomes/<queue>-a<attempt>-rejected.parquet  rows that could never be sent (with reasons)

The state machine (`ShardState`): planned -> submitting (intent: written BEFORE create) ->
submitted (batch id written right after) -> completed | failed | expired | cancelled -> collected.
A record is written whole: locally to a temp file then renamed over the old one; on object
stores a single PUT of a whole object, which is atomic. Nothing here holds a secret.

Light module: pyarrow only.
"""

from __future__ import annotations

import enum
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timezone
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from routellm_batch.crashpoints import crash_point

if TYPE_CHECKING:
    from routellm_batch.config import RunConfig

__all__ = [
    "ALLOWED",
    "Ledger",
    "LedgerError",
    "ShardRecord",
    "ShardState",
    "Transition",
    "atomic_output",
    "filesystem_for",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LedgerError(RuntimeError):
    """The ledger is inconsistent or a transition is not allowed."""


class ShardState(str, enum.Enum):
    PLANNED = "planned"
    """In a complete plan; no create has been attempted since it was (re)planned."""
    SUBMITTING = "submitting"
    """Intent to create recorded; a batch may or may not exist: reconcile before any new create."""
    SUBMITTED = "submitted"
    """The batch id is known; the provider is working on it (provider_status says how far)."""
    COMPLETED = "completed"
    FAILED = "failed"
    """The batch failed as a whole, or the create was refused for good (no batch id then)."""
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    COLLECTED = "collected"
    """Every request of the shard has a stored outcome."""

    @property
    def batch_terminal(self) -> bool:
        return self in (ShardState.COMPLETED, ShardState.FAILED, ShardState.EXPIRED, ShardState.CANCELLED)

    @property
    def in_flight(self) -> bool:
        return self in (ShardState.SUBMITTING, ShardState.SUBMITTED)


_S = ShardState
ALLOWED: dict[ShardState, frozenset[ShardState]] = {
    # -> failed: the provider refused the shard's input for good (e.g. the file upload).
    _S.PLANNED: frozenset({_S.PLANNED, _S.SUBMITTING, _S.FAILED}),
    _S.SUBMITTING: frozenset({_S.PLANNED, _S.SUBMITTED, _S.FAILED, _S.COMPLETED, _S.EXPIRED, _S.CANCELLED}),
    _S.SUBMITTED: frozenset({_S.SUBMITTED, _S.COMPLETED, _S.FAILED, _S.EXPIRED, _S.CANCELLED, _S.PLANNED}),
    # -> planned: an adopted (unverified) Anthropic batch turned out not to be ours.
    _S.COMPLETED: frozenset({_S.COLLECTED, _S.PLANNED}),
    _S.FAILED: frozenset({_S.COLLECTED, _S.PLANNED}),
    _S.EXPIRED: frozenset({_S.COLLECTED, _S.PLANNED}),
    _S.CANCELLED: frozenset({_S.COLLECTED, _S.PLANNED}),
    _S.COLLECTED: frozenset(),
}


@dataclass(frozen=True)
class Transition:
    state: ShardState
    at: datetime
    note: str = ""


@dataclass(frozen=True)
class ShardRecord:
    run_id: str
    shard_id: str
    queue: str
    provider: str
    model: str
    attempt: int
    index: int
    state: ShardState
    row_count: int
    bytes: int
    est_input_tokens: int
    input_file: str
    """URI of the shard input as sent (shards/<id>.jsonl)."""
    map_file: str
    """URI of the custom_id -> prompt_id map (shards/<id>.map.parquet)."""
    created_at: datetime
    updated_at: datetime
    batch_id: str | None = None
    provider_input_file_id: str | None = None
    provider_status: str | None = None
    intent_at: datetime | None = None
    """When the last create was about to be sent (the start of the reconcile window)."""
    create_timeout_s: float | None = None
    """How long that create could take: a lost create can land until intent_at + this."""
    batch_verified: bool = True
    """False for an Anthropic batch adopted by reconcile before its custom_ids could be read."""
    foreign_batch_ids: tuple[str, ...] = ()
    """Batches once adopted for this shard and later proven not to be its own."""
    error_type: str | None = None
    error: str | None = None
    history: tuple[Transition, ...] = ()
    plan_version: int = 1
    """The plan version that made this shard: a re-split adds a version for its new rows only."""

    def to_json(self) -> str:
        def enc(v: Any) -> Any:
            if isinstance(v, datetime):
                return v.isoformat()
            if isinstance(v, enum.Enum):
                return v.value
            raise TypeError(type(v).__name__)

        return json.dumps(asdict(self), default=enc, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardRecord:
        raw = json.loads(text)
        for k in ("created_at", "updated_at", "intent_at"):
            if raw.get(k):
                raw[k] = datetime.fromisoformat(raw[k])
        raw["state"] = ShardState(raw["state"])
        raw["foreign_batch_ids"] = tuple(raw.get("foreign_batch_ids") or ())
        raw["history"] = tuple(
            Transition(ShardState(h["state"]), datetime.fromisoformat(h["at"]), h.get("note", ""))
            for h in raw.get("history") or ()
        )
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


# -- filesystems --------------------------------------------------------------------------------


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; s3a:// (Spark's spelling) is read as s3://."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3a", "s3n"):
        uri = f"s3://{rest}"
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/")


def _is_local(fs: pafs.FileSystem) -> bool:
    return fs.type_name == "local"


@contextmanager
def atomic_output(fs: pafs.FileSystem, path: str) -> Iterator[IO[bytes]]:
    """Write a whole object: readers see the old content or the new one, never a part.

    Local: a temp file next to the target, renamed over it when the block ends without error.
    Object stores: a stream whose object appears only when it is closed (a single PUT /
    completed multipart upload is atomic there); on error it is aborted, not closed.
    """
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    if _is_local(fs):
        # A dot name: Spark and pyarrow.dataset skip it, so a killed writer's leftover is never read.
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with fs.open_output_stream(tmp) as out:
                yield out
            crash_point(f"ledger.write:{name}")  # the crash-recovery tests' kill point (see crashpoints.py)
            fs.move(tmp, path)
        except BaseException:
            try:
                fs.delete_file(tmp)
            except (FileNotFoundError, OSError):
                pass
            raise
    else:
        out = fs.open_output_stream(path)
        try:
            yield out
        except BaseException:
            abort = getattr(out, "abort", None)
            if abort is not None:
                abort()
            raise
        out.close()


class Ledger:
    """The records and files of one run date."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri.rstrip("/")
        self.run_id = run_id
        self.fs, self.base = filesystem_for(self.uri)

    @classmethod
    def for_run(cls, config: RunConfig, run_date: date) -> Ledger:
        return cls(f"{config.table_uri('ledger')}/run_date={run_date.isoformat()}", config.run_id(run_date))

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def uri_of(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    @staticmethod
    def input_rel(shard_id: str) -> str:
        return f"shards/{shard_id}.jsonl"

    @staticmethod
    def map_rel(shard_id: str) -> str:
        return f"shards/{shard_id}.map.parquet"

    @staticmethod
    def result_rel(shard_id: str, source: str) -> str:
        return f"results/{shard_id}/{source}.jsonl"

    @staticmethod
    def outcome_rel(shard_id: str) -> str:
        return f"outcomes/{shard_id}.parquet"

    @staticmethod
    def rejected_rel(queue: str, attempt: int) -> str:
        return f"outcomes/{queue}-a{attempt}-rejected.parquet"

    @staticmethod
    def plan_rel(queue: str, attempt: int) -> str:
        return f"plans/{queue}-a{attempt}.json"

    # -- raw files -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    @contextmanager
    def open_output(self, rel: str) -> Iterator[IO[bytes]]:
        with atomic_output(self.fs, self.path(rel)) as out:
            yield out

    @contextmanager
    def open_input(self, rel: str) -> Iterator[IO[bytes]]:
        """A readable binary file; local files are opened directly (seekable, for uploads)."""
        if _is_local(self.fs):
            with open(self.path(rel), "rb") as f:
                yield f
        else:
            with self.fs.open_input_stream(self.path(rel)) as f:
                yield f

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_output(rel) as out:
            out.write(data)

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def iter_lines(self, rel: str, chunk: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        """(line number, line without newline) of a stored file, streamed in chunks; blank lines skipped."""
        n = 0
        buf = b""
        with self.fs.open_input_stream(self.path(rel)) as f:
            while True:
                data = f.read(chunk)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    n += 1
                    if line.strip():
                        yield n, line
        if buf.strip():
            yield n + 1, buf

    def list_files(self, rel_dir: str) -> list[str]:
        """Names (not paths) of the files in a folder; (dot-named) temp files of interrupted writes excluded."""
        sel = pafs.FileSelector(self.path(rel_dir), allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.fs.get_file_info(sel)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        )

    # -- records ---------------------------------------------------------------------------------
    def put(self, record: ShardRecord) -> ShardRecord:
        if record.run_id != self.run_id:
            raise LedgerError(f"record {record.shard_id} belongs to run {record.run_id!r}, not {self.run_id!r}")
        self.write_bytes(f"{record.shard_id}.json", record.to_json().encode())
        return record

    def get(self, shard_id: str) -> ShardRecord | None:
        data = self.read_bytes(f"{shard_id}.json")
        return ShardRecord.from_json(data) if data is not None else None

    def records(self) -> list[ShardRecord]:
        out = []
        for name in self.list_files(""):
            if name.endswith(".json"):
                data = self.read_bytes(name)
                if data is not None:
                    out.append(ShardRecord.from_json(data))
        return sorted(out, key=lambda r: (r.attempt, r.queue, r.index))

    def new_record(self, **fields: Any) -> ShardRecord:
        now = utcnow()
        rec = ShardRecord(
            run_id=self.run_id,
            state=ShardState.PLANNED,
            created_at=now,
            updated_at=now,
            history=(Transition(ShardState.PLANNED, now, "planned"),),
            **fields,
        )
        return self.put(rec)

    def advance(self, record: ShardRecord, state: ShardState, note: str = "", **changes: Any) -> ShardRecord:
        """Persist a transition (or a change within a state) with its time and a note."""
        if state not in ALLOWED[record.state]:
            raise LedgerError(f"shard {record.shard_id}: transition {record.state.value} -> {state.value} not allowed")
        now = utcnow()
        history = record.history
        if state is not record.state or note:
            history = history + (Transition(state, now, note[:500]),)
        return self.put(replace(record, state=state, updated_at=now, history=history, **changes))

    def update(self, record: ShardRecord, **changes: Any) -> ShardRecord:
        """Change fields without a transition (e.g. the uploaded input file id)."""
        return self.put(replace(record, updated_at=utcnow(), **changes))

    # -- plans -----------------------------------------------------------------------------------
    @staticmethod
    def lane(queue: str, version: int) -> str:
        """The name a queue's plan version goes by in plan, shard and rejected-file names."""
        return queue if version == 1 else f"{queue}_v{version}"

    def write_plan(self, lane: str, attempt: int, shard_ids: list[str], rejected: int, **extra: Any) -> None:
        body = {"queue": lane, "attempt": attempt, "shards": shard_ids, "rejected": rejected, "at": utcnow().isoformat(), **extra}
        self.write_bytes(self.plan_rel(lane, attempt), json.dumps(body, indent=1).encode())

    def read_plan(self, lane: str, attempt: int) -> dict[str, Any] | None:
        data = self.read_bytes(self.plan_rel(lane, attempt))
        return json.loads(data) if data is not None else None

    def plan_versions(self, queue: str) -> list[int]:
        """The queue's plan versions whose first-attempt plan is complete, oldest first."""
        versions = []
        for name in self.list_files("plans"):
            if name == f"{queue}-a1.json":
                versions.append(1)
            elif name.startswith(f"{queue}_v") and name.endswith("-a1.json") and name[len(queue) + 2 : -8].isdigit():
                versions.append(int(name[len(queue) + 2 : -8]))
        return sorted(versions)

    # -- as a table ------------------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """The records as the `ledger` table (schemas/tables.yaml)."""
        from routellm_batch.schemas import arrow_schema

        schema = arrow_schema("ledger")
        rows = [
            {
                "run_id": r.run_id,
                "shard_id": r.shard_id,
                "queue": r.queue,
                "provider": r.provider,
                "model": r.model,
                "attempt": r.attempt,
                "batch_id": r.batch_id,
                "state": r.state.value,
                "input_file": r.input_file,
                "row_count": r.row_count,
                "bytes": r.bytes,
                "error": r.error,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in self.records()
        ]
        return pa.Table.from_pylist(rows, schema=schema)

