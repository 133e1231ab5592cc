"""Stage 4: shard each queue into provider batches and create them, never paying twice.

    routellm-batch submit --config C --run-date D

1. Plan (once per queue and attempt): stream the routed rows (pyarrow.dataset), render each into
   a request, pack requests into shards within every limit, write each shard's input and
   custom_id map, then its ledger record (`planned`), then the plan marker. A crash before the
   marker re-plans from scratch; no batch can exist yet then.
2. Reconcile: a record left in `submitting` (a crash, or a create whose answer was lost) is
   looked up in the provider's batch list first: OpenAI by our metadata (run_id, shard_id);
   Anthropic, which has no metadata, by time window + request count + custom_ids (see
   `_reconcile_untagged` for the residual risk). A shard whose batch exists is never created again.
3. Create: record the intent (`submitting`, with its time) BEFORE the call, the batch id right
   after it. The SDKs' own retries are off (max_retries=0); a failed create is retried here only
   when it certainly did not land (a 4xx answer) or after reconciling found no batch.

Per-model enqueued-token budget: a shard is created only while the estimated prompt tokens of
the model's open batches plus its own stay within `batch.enqueued_token_budget`; the rest stay
`planned` and `wait` / `collect` create them as batches finish.

Light module: pyarrow + the SDKs (inside the providers); no Spark.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from routellm_batch.config import ModelSpec, RunConfig, load_config
from routellm_batch.stages import add_run_arguments
from routellm_batch.ledger import Ledger, ShardRecord, ShardState, filesystem_for, utcnow
from routellm_batch.providers.base import BatchInfo, BatchProvider, BatchRequest, ShardPayload
from routellm_batch.providers.custom_id import make_custom_id
from routellm_batch.crashpoints import crash_point
from routellm_batch.providers.errors import (
    ErrorType,
    ProviderError,
    StopRunError,
    TerminalProviderError,
)
from routellm_batch.providers.pricing import require_prices
from routellm_batch.providers.registry import build_provider
from routellm_batch.providers.retry import call_with_retries
from routellm_batch.providers.sharding import PackedRequest, ShardLimits, ShardPacker, shard_id
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages.outcomes import OutcomeWriter, error_row, iter_outcome_batches

__all__ = [
    "QUEUES",
    "RunContext",
    "SubmitSummary",
    "add_arguments",
    "execute",
    "open_run",
    "plan_queue",
    "plan_retries",
    "routed_prompt_ids",
    "routed_row_count",
    "run",
    "submit_pending",
    "superseded_plans",
    "sweep_duplicates",
]

log = logging.getLogger(__name__)

QUEUES = ("strong", "weak")
MAP_SCHEMA = pa.schema(
    [
        pa.field("custom_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("est_input_tokens", pa.int64(), nullable=False),
    ]
)
_ROUTED_COLUMNS = ["prompt_id", "prompt", "messages", "system", "max_tokens", "model", "provider", "est_input_tokens"]


# -- the run's context ------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What every stage of one run date shares: config, ledger, one provider per queue."""

    config: RunConfig
    run_date: date
    ledger: Ledger
    providers: dict[str, BatchProvider]
    reconcile_skew_s: float = 300.0
    """Clock-skew allowance between us and the provider when matching creation times."""
    sleep: Callable[[float], None] = time.sleep
    created: int = 0
    adopted: int = 0
    duplicates: set[str] = field(default_factory=set)
    """Batches found tagged with this run but unknown to the ledger (see `sweep_duplicates`)."""

    @property
    def run_id(self) -> str:
        return self.ledger.run_id

    def spec(self, queue: str) -> ModelSpec:
        return self.config.strong if queue == "strong" else self.config.weak

    def provider(self, queue: str) -> BatchProvider:
        return self.providers[queue]

    def payload(self, record: ShardRecord) -> ShardPayload:
        rel = Ledger.input_rel(record.shard_id)
        return ShardPayload(
            shard_id=record.shard_id,
            run_id=record.run_id,
            attempt=record.attempt,
            row_count=record.row_count,
            bytes=record.bytes,
            open_input=lambda: self.ledger.open_input(rel),
        )

    def close(self) -> None:
        for p in self.providers.values():
            p.close()


def open_run(
    config: RunConfig,
    run_date: date,
    *,
    providers: Mapping[str, BatchProvider] | None = None,
    provider_options: Mapping[str, Any] | None = None,
) -> RunContext:
    """`providers` (by queue) lets a caller inject configured providers; else built from config."""
    built = dict(providers or {})
    options = dict(provider_options or {})
    options.setdefault("create_timeout_s", config.batch.create_timeout_seconds)
    for queue in QUEUES:
        if queue not in built:
            spec = config.strong if queue == "strong" else config.weak
            built[queue] = build_provider(spec, **options)
    return RunContext(config=config, run_date=run_date, ledger=Ledger.for_run(config, run_date), providers=built)


# -- reading the routed table --------------------------------------------------------------------


def _routed_dir(config: RunConfig, run_date: date) -> str:
    return f"{config.table_uri('routed')}/run_date={run_date.isoformat()}"


def _routed_dataset(config: RunConfig, run_date: date, queue: str) -> Any | None:
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    fs, root = filesystem_for(_routed_dir(config, run_date))
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise FileNotFoundError(
            f"no routed table for run date {run_date.isoformat()} at {_routed_dir(config, run_date)}: run `split` first"
        )
    path = f"{root}/queue={queue}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None  # no row went to this queue
    # Partition columns live in the directory names (as Spark writes them); read the rest as declared.
    schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
    return ds.dataset(path, filesystem=fs, format="parquet", schema=schema)


def routed_row_count(config: RunConfig, run_date: date) -> int:
    total = 0
    for queue in QUEUES:
        dataset = _routed_dataset(config, run_date, queue)
        total += dataset.count_rows() if dataset is not None else 0
    return total


def iter_routed_rows(config: RunConfig, run_date: date, queue: str, spec: ModelSpec) -> Iterator[dict[str, Any]]:
    """The queue's routed rows, streamed in record batches (never the whole table)."""
    dataset = _routed_dataset(config, run_date, queue)
    if dataset is None:
        return
    for batch in dataset.to_batches(columns=_ROUTED_COLUMNS, batch_size=4096):
        for row in batch.to_pylist():
            if row["model"] != spec.model or row["provider"] != spec.provider:
                raise ValueError(
                    f"routed row prompt_id={row['prompt_id']!r} (queue {queue}) names {row['provider']}/{row['model']}, "
                    f"but the config's {queue} model is {spec.provider}/{spec.model}: re-run `split` with this config"
                )
            yield row


# -- planning ---------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    prompt_id: str
    est_tokens: int
    body: Mapping[str, Any] | None
    error: tuple[ErrorType, str] | None = None


class _ShardWriter:
    """Streams one shard's input lines to the ledger; on close writes its map, then its record."""

    def __init__(self, ctx: RunContext, queue: str, attempt: int, index: int, version: int = 1) -> None:
        self.ctx, self.queue, self.attempt, self.index, self.version = ctx, queue, attempt, index, version
        self.shard_id = shard_id(ctx.run_id, Ledger.lane(queue, version), attempt, index)
        self._cm = ctx.ledger.open_output(Ledger.input_rel(self.shard_id))
        self._out = self._cm.__enter__()
        self._cids: list[str] = []
        self._pids: list[str] = []
        self._tokens: list[int] = []
        self._seen: set[str] = set()
        self._bytes = 0

    def add(self, item: PackedRequest) -> None:
        if item.custom_id in self._seen:
            raise ValueError(f"shard {self.shard_id}: custom_id {item.custom_id} twice (prompt_id={item.prompt_id!r})")
        self._seen.add(item.custom_id)
        self._out.write(item.line)
        self._bytes += len(item.line)
        self._cids.append(item.custom_id)
        self._pids.append(item.prompt_id)
        self._tokens.append(item.est_tokens)

    def close(self) -> ShardRecord:
        self._cm.__exit__(None, None, None)
        ledger = self.ctx.ledger
        table = pa.table({"custom_id": self._cids, "prompt_id": self._pids, "est_input_tokens": self._tokens}, schema=MAP_SCHEMA)
        with ledger.open_output(Ledger.map_rel(self.shard_id)) as out:
            pq.write_table(table, out)
        spec = self.ctx.spec(self.queue)
        return ledger.new_record(
            shard_id=self.shard_id,
            queue=self.queue,
            provider=spec.provider,
            model=spec.model,
            attempt=self.attempt,
            index=self.index,
            row_count=len(self._cids),
            bytes=self._bytes,
            est_input_tokens=sum(self._tokens),
            input_file=ledger.uri_of(Ledger.input_rel(self.shard_id)),
            map_file=ledger.uri_of(Ledger.map_rel(self.shard_id)),
            plan_version=self.version,
        )


@dataclass(frozen=True)
class PlanResult:
    queue: str
    attempt: int
    shards: list[ShardRecord]
    rejected: int
    reused: bool
    """True when no new plan was made (a re-run with nothing new to send)."""
    added: int = 0
    """Rows a re-split added to this queue (new, or re-routed from the other queue): planned as a new version."""
    left: int = 0
    """Rows planned before that the routed table no longer has in this queue (they left the input or were
    re-routed): their batches stand, their outcomes are not published."""


def _custom_id_key(run_id: str, version: int) -> str:
    # Each plan version has its own custom_ids, so a prompt re-routed back and forth never shares one.
    return run_id if version == 1 else f"{run_id}/v{version}"


def _build_plan(
    ctx: RunContext, queue: str, attempt: int, candidates: Iterable[_Candidate], version: int = 1, **extra: Any
) -> PlanResult:
    ledger, provider, spec = ctx.ledger, ctx.provider(queue), ctx.spec(queue)
    limits = ShardLimits.for_provider(provider.limits, ctx.config.batch)
    packer: ShardPacker[ShardRecord] = ShardPacker(limits, lambda i: _ShardWriter(ctx, queue, attempt, i, version))
    max_attempts = ctx.config.batch.max_attempts
    lane = Ledger.lane(queue, version)
    rejected = OutcomeWriter(ledger, Ledger.rejected_rel(lane, attempt))
    seen_ids = array("Q")  # 8 bytes per row: duplicate prompt ids would mean two outcomes for one prompt
    key = _custom_id_key(ctx.run_id, version)
    try:
        for c in candidates:
            cid = make_custom_id(key, c.prompt_id, attempt)
            seen_ids.append(hash(c.prompt_id) & 0xFFFFFFFFFFFFFFFF)
            base = {
                "run_id": ctx.run_id, "prompt_id": c.prompt_id, "queue": queue, "model": spec.model,
                "provider": spec.provider, "batch_id": None, "custom_id": cid, "attempt": attempt,
            }  # fmt: skip
            if c.error is not None:
                rejected.add(error_row(base, c.error[0], c.error[1], max_attempts=max_attempts))
                continue
            assert c.body is not None
            item = PackedRequest(c.prompt_id, cid, provider.serialize_request(BatchRequest(cid, c.body)), c.est_tokens)
            if not packer.fits_alone(item):
                msg = f"serialized request is {len(item.line)} bytes, over the batch limit of {limits.max_bytes} bytes"
                rejected.add(error_row(base, ErrorType.REQUEST_TOO_LARGE, msg, max_attempts=max_attempts))
                continue
            packer.add(item)
        shards = packer.finish()
        ids = np.frombuffer(seen_ids, dtype=np.uint64) if len(seen_ids) else np.zeros(0, dtype=np.uint64)
        if np.unique(ids).size != ids.size:
            raise ValueError(
                f"queue {queue}: the routed table holds duplicate prompt_ids for {ctx.run_id}; "
                "each prompt must appear once (check the split stage's output)"
            )
    except BaseException:
        rejected.abort()
        raise
    rejected.commit()
    ledger.write_plan(lane, attempt, [r.shard_id for r in shards], rejected.count, version=version, **extra)
    log.info(
        "planned %s attempt %d: %d shard(s), %d row(s) rejected before submission",
        lane, attempt, len(shards), rejected.count,
    )  # fmt: skip
    return PlanResult(queue, attempt, shards, rejected.count, reused=False, added=int(extra.get("added", 0)))


def _planned_prompt_ids(ctx: RunContext, queue: str, versions: list[int]) -> set[str]:
    """Every prompt a complete first-attempt plan of the queue holds (sent in a shard or rejected)."""
    ledger = ctx.ledger
    out: set[str] = set()
    for version in versions:
        lane = Ledger.lane(queue, version)
        plan = ledger.read_plan(lane, 1) or {}
        rels = [Ledger.map_rel(s) for s in plan.get("shards", [])] + [Ledger.rejected_rel(lane, 1)]
        for rel in rels:
            if ledger.exists(rel):
                out.update(pq.read_table(ledger.path(rel), filesystem=ledger.fs, columns=["prompt_id"]).column("prompt_id").to_pylist())
    return out


def plan_queue(ctx: RunContext, queue: str) -> PlanResult:
    """Attempt 1 of a queue from the routed table. On a re-run the plan is versioned: rows of the
    routed table no plan of this queue holds yet (added, or re-routed here by a new split) become a
    new plan version; rows planned before keep their shards, batches and outcomes (never sent
    twice); planned rows the routed table lost are counted (`left`) and left out of the responses."""
    ledger = ctx.ledger
    provider = ctx.provider(queue)
    spec = ctx.spec(queue)
    versions = ledger.plan_versions(queue)
    planned = _planned_prompt_ids(ctx, queue, versions) if versions else set()
    still_routed: set[str] = set()

    def candidates() -> Iterator[_Candidate]:
        for row in iter_routed_rows(ctx.config, ctx.run_date, queue, spec):
            if versions:
                still_routed.add(row["prompt_id"])
                if row["prompt_id"] in planned:
                    continue
            est = int(row.get("est_input_tokens") or 0)
            try:
                yield _Candidate(row["prompt_id"], est, provider.render_body(row))
            except ValueError as exc:
                yield _Candidate(row["prompt_id"], est, None, (ErrorType.INVALID_REQUEST, f"cannot build the request: {exc}"))

    if not versions:
        return _build_plan(ctx, queue, 1, candidates())
    new = list(candidates())  # only the rows to plan are held (with their request bodies)
    left = len(planned - still_routed)
    if left:
        log.warning("queue %s: %d planned row(s) are no longer routed here (left the input or re-routed); "
                    "their batches stand, their outcomes are not published", queue, left)  # fmt: skip
    if new:
        version = versions[-1] + 1
        log.info("queue %s: %d routed row(s) not planned yet: plan version %d", queue, len(new), version)
        result = _build_plan(ctx, queue, 1, new, version, added=len(new), left=left)
        return replace(result, shards=_plan_records(ctx, queue, versions) + result.shards, left=left)
    rejected = sum(int((ledger.read_plan(Ledger.lane(queue, v), 1) or {}).get("rejected", 0)) for v in versions)
    return PlanResult(queue, 1, _plan_records(ctx, queue, versions), rejected, reused=True, left=left)


def _plan_records(ctx: RunContext, queue: str, versions: list[int]) -> list[ShardRecord]:
    out = []
    for version in versions:
        lane = Ledger.lane(queue, version)
        plan = ctx.ledger.read_plan(lane, 1) or {}
        for s in plan.get("shards", []):
            record = ctx.ledger.get(s)
            if record is None:
                raise RuntimeError(f"ledger {ctx.ledger.uri}: plan {lane}-a1 names a shard without a record")
            out.append(record)
    return out


def routed_prompt_ids(config: RunConfig, run_date: date, queue: str) -> pa.Array:
    """The prompt ids the routed table sends to `queue` now."""
    dataset = _routed_dataset(config, run_date, queue)
    if dataset is None:
        return pa.array([], pa.string())
    return dataset.to_table(columns=["prompt_id"]).column("prompt_id").combine_chunks()


def superseded_plans(ledger: Ledger) -> bool:
    """True when a re-split added a plan version: then only the current routed rows' outcomes are published."""
    return any(ledger.plan_versions(q)[1:] for q in QUEUES)


def plan_retries(ctx: RunContext) -> list[PlanResult]:
    """Plan attempt N+1 of every queue whose attempt-N shards are all collected and left
    retryable rows. The requests are taken from the attempt-N shard inputs, as they were sent."""
    ledger = ctx.ledger
    records = ledger.records()
    out = []
    for queue, version in ((q, v) for q in QUEUES for v in ledger.plan_versions(q)):
        lane = Ledger.lane(queue, version)
        attempt = 1
        while ledger.read_plan(lane, attempt + 1) is not None:
            attempt += 1
        if attempt >= ctx.config.batch.max_attempts or ledger.read_plan(lane, attempt) is None:
            continue
        shards = [r for r in records if r.queue == queue and r.attempt == attempt and r.plan_version == version]
        if not shards or any(r.state is not ShardState.COLLECTED for r in shards):
            continue
        retry_ids: dict[str, set[str]] = {}
        for r in shards:
            ids: set[str] = set()
            for batch in iter_outcome_batches(ledger, Ledger.outcome_rel(r.shard_id), ["custom_id", "final"]):
                for cid, final in zip(batch.column("custom_id").to_pylist(), batch.column("final").to_pylist()):
                    if not final:
                        ids.add(cid)
            if ids:
                retry_ids[r.shard_id] = ids
        if not retry_ids:
            continue
        provider = ctx.provider(queue)

        def candidates(shards: list[ShardRecord] = shards, retry_ids: dict[str, set[str]] = retry_ids) -> Iterator[_Candidate]:
            for r in shards:
                ids = retry_ids.get(r.shard_id)
                if not ids:
                    continue
                mapping = pq.read_table(ledger.path(Ledger.map_rel(r.shard_id)), filesystem=ledger.fs)
                pids = mapping.column("prompt_id").to_pylist()
                toks = mapping.column("est_input_tokens").to_pylist()
                for i, (_, line) in enumerate(ledger.iter_lines(Ledger.input_rel(r.shard_id))):
                    req = provider.parse_request_line(line)
                    if req.custom_id in ids:
                        yield _Candidate(pids[i], int(toks[i]), req.body)

        log.info("queue %s: %d row(s) to retry as attempt %d", lane, sum(map(len, retry_ids.values())), attempt + 1)
        out.append(_build_plan(ctx, queue, attempt + 1, candidates(), version))
    return out


# -- reconcile and create -----------------------------------------------------------------------


def _metadata(record: ShardRecord) -> dict[str, str]:
    return {"run_id": record.run_id, "shard_id": record.shard_id, "attempt": str(record.attempt), "producer": "routellm-batch"}


def _adopt(ctx: RunContext, record: ShardRecord, info: BatchInfo, *, verified: bool, how: str) -> ShardRecord:
    ctx.adopted += 1
    log.warning("shard %s: adopted existing batch %s (%s); no new batch created", record.shard_id, info.batch_id, how)
    return ctx.ledger.advance(
        record,
        ShardState.SUBMITTED,
        note=f"reconciled: batch {info.batch_id} found by {how}",
        batch_id=info.batch_id,
        provider_status=info.provider_status,
        batch_verified=verified,
        error=None,
        error_type=None,
    )


def _peek_custom_ids(provider: BatchProvider, info: BatchInfo, limit: int = 5) -> list[str]:
    """The first custom_ids of an ended batch's results (to tell whose batch it is)."""
    return call_with_retries(
        lambda: _peek_once(provider, info, limit), policy=provider.retry, what=f"peek at results of batch {info.batch_id}"
    )


def _peek_once(provider: BatchProvider, info: BatchInfo, limit: int) -> list[str]:
    import json

    found: list[str] = []
    for source in provider.result_sources(info):
        buf = b""
        with provider.open_result_stream(info, source) as chunks:
            for chunk in chunks:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    try:
                        cid = json.loads(line).get("custom_id")
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(cid, str):
                        found.append(cid)
                if len(found) >= limit:
                    return found
    return found


def _map_ids(ctx: RunContext, record: ShardRecord) -> set[str]:
    table = pq.read_table(ctx.ledger.path(Ledger.map_rel(record.shard_id)), filesystem=ctx.ledger.fs, columns=["custom_id"])
    return set(table.column("custom_id").to_pylist())


def _reconcile_tagged(ctx: RunContext, record: ShardRecord, provider: BatchProvider) -> ShardRecord | None:
    """OpenAI: our metadata names the shard; a match is certain."""
    assert record.intent_at is not None
    since = record.intent_at - timedelta(seconds=ctx.reconcile_skew_s)
    matches = [
        b
        for b in provider.list_batches(since)
        if b.metadata.get("run_id") == record.run_id and b.metadata.get("shard_id") == record.shard_id
    ]
    if not matches:
        return None
    matches.sort(key=lambda b: (b.created_at, b.batch_id))
    for extra in matches[1:]:
        # Two creates landed (the list lagged longer than batch.list_lag_seconds): cancel the spare
        # before it runs up a bill.
        log.error("shard %s: duplicate batch %s (keeping %s); cancelling it", record.shard_id, extra.batch_id, matches[0].batch_id)
        ctx.duplicates.add(extra.batch_id)
        if not extra.state.terminal:
            provider.cancel(extra.batch_id)
    return _adopt(ctx, record, matches[0], verified=True, how="metadata run_id/shard_id")


def _reconcile_untagged(ctx: RunContext, record: ShardRecord, provider: BatchProvider) -> ShardRecord | None:
    """Anthropic: no metadata. A batch is this shard's when it is unclaimed by any other record,
    was created within [intent - skew, intent + create timeout + skew], holds exactly row_count
    requests, and, once it has ended, its results carry this shard's custom_ids (deterministic
    from run, prompt and attempt, so no other shard's or run's requests have them).

    A batch still in progress cannot show its custom_ids: it is adopted on window + count alone,
    marked unverified, and checked at collect; if it proves foreign the shard goes back to
    `planned` and is created then (a delay, never a double payment).

    Residual risks: (1) a create that lands, or shows in the list, after we stopped listing would be
    missed and the shard created twice. `reconcile_intent` lists from the moment the create can no
    longer be in flight (intent + create timeout when its fate is unknown, a 1 s settle after a 5xx
    or a closed connection) and keeps listing for `batch.list_lag_seconds`; a list lagging longer,
    or a proxy answering 502 while the provider still works on the request, can still cause one.
    For OpenAI, `sweep_duplicates` finds such a batch by its metadata and cancels it; for
    Anthropic nothing can (its custom_ids are only readable once it has ended).
    (2) Another client creating a same-size batch in the same workspace inside the window, while
    our create was lost, delays this shard until that batch ends (then it is released).
    (3) A batch whose results are no longer downloadable (29 days) cannot be verified.
    """
    assert record.intent_at is not None
    skew = timedelta(seconds=ctx.reconcile_skew_s)
    window_end = record.intent_at + timedelta(seconds=record.create_timeout_s or 0) + skew
    claimed = set()
    for r in ctx.ledger.records():
        if r.batch_id:
            claimed.add(r.batch_id)
        claimed.update(r.foreign_batch_ids)
    candidates = sorted(
        (
            b
            for b in provider.list_batches(record.intent_at - skew)
            if b.batch_id not in claimed and b.created_at <= window_end and b.request_total == record.row_count
        ),
        key=lambda b: b.created_at,
    )
    if not candidates:
        return None
    ours: set[str] | None = None
    for b in candidates:
        if b.state.terminal:
            ours = ours if ours is not None else _map_ids(ctx, record)
            if any(cid in ours for cid in _peek_custom_ids(provider, b)):
                return _adopt(ctx, record, b, verified=True, how="time window, request count and custom_ids")
    running = [b for b in candidates if not b.state.terminal]
    if running:
        return _adopt(ctx, record, running[0], verified=False, how="time window and request count (custom_ids checked at collect)")
    return None


SETTLE_SECONDS = 1.0
"""Pause before listing after a create the server answered with an error or a closed connection."""


def reconcile_intent(ctx: RunContext, record: ShardRecord, *, server_done: bool = False) -> ShardRecord:
    """Resolve a `submitting` record: adopt the batch the create made, or go back to `planned`.

    `server_done`: the server answered the create (5xx) or closed its connection, so it is no
    longer working on it; list after a short settle. Otherwise (our timeout, or a crashed
    process found the intent) a create still on its way can land until intent + create timeout:
    wait for that before listing. A batch may show in the list only a while after it was
    created: absent, the list is read again until `batch.list_lag_seconds` have passed, and only
    then does the shard go back to `planned` (to be created again)."""
    provider = ctx.provider(record.queue)
    if record.intent_at is None:
        return ctx.ledger.advance(record, ShardState.PLANNED, note="reconcile: no intent time recorded")
    timeout = record.create_timeout_s if record.create_timeout_s is not None else provider.create_timeout_s(record.bytes)
    lag = ctx.config.batch.list_lag_seconds
    if server_done:
        remaining = SETTLE_SECONDS
    else:
        remaining = (record.intent_at + timedelta(seconds=timeout) - utcnow()).total_seconds()
        lag += min(0.0, remaining)  # a crash found long after: part of the lag has passed already
    if remaining > 0:
        log.info("shard %s: waiting %.1fs for a possibly in-flight create before listing batches", record.shard_id, remaining)
        ctx.sleep(remaining)
    reconcile = _reconcile_tagged if provider.tags_batches else _reconcile_untagged
    waited = 0.0
    # Waits are summed, not read off the clock: the schedule is the same on a slow machine.
    while (found := reconcile(ctx, record, provider)) is None and waited < lag:
        step = min(lag - waited, max(SETTLE_SECONDS, lag / 8))
        log.info("shard %s: no batch in the list yet; listing again in %.1fs (list lag allowance %.0fs)", record.shard_id, step, lag)
        ctx.sleep(step)
        waited += step
    if found is not None:
        return found
    return ctx.ledger.advance(record, ShardState.PLANNED, note="reconcile: the provider has no batch for this intent")


def _create(ctx: RunContext, record: ShardRecord) -> ShardRecord:
    """Create one planned shard's batch (see the module doc for the protocol)."""
    ledger, provider = ctx.ledger, ctx.provider(record.queue)
    payload = ctx.payload(record)
    policy = provider.retry
    for try_no in range(1, policy.attempts + 1):
        try:
            if record.provider_input_file_id is None:
                file_id = provider.upload_input(payload)
                crash_point("upload.returned")
                if file_id is not None:
                    record = ledger.update(record, provider_input_file_id=file_id)
        except TerminalProviderError as exc:
            if isinstance(exc, StopRunError) or exc.status_code in (404, 405):
                raise
            return _refused(ctx, record, exc)
        record = ledger.advance(
            record,
            ShardState.SUBMITTING,
            note=f"create try {try_no}",
            intent_at=utcnow(),
            create_timeout_s=provider.create_timeout_s(record.bytes),
        )
        try:
            info = provider.create(payload, input_file_id=record.provider_input_file_id, metadata=_metadata(record))
        except ProviderError as exc:
            if exc.may_have_acted:
                log.warning("shard %s: create outcome unknown (%s); reconciling before any retry", record.shard_id, exc)
                record = reconcile_intent(ctx, record, server_done=exc.error_type is not ErrorType.TIMEOUT)
                if record.state is not ShardState.PLANNED:
                    return record
                record = ledger.update(record, error=str(exc), error_type=exc.error_type.value)
            else:
                record = ledger.advance(record, ShardState.PLANNED, note=f"create refused: {exc}", error=str(exc), error_type=exc.error_type.value)
                if isinstance(exc, StopRunError) or exc.status_code in (404, 405):
                    raise
                if isinstance(exc, TerminalProviderError):
                    return _refused(ctx, record, exc)
            wait = exc.retry_after if exc.retry_after is not None else random.uniform(0.5, 1.0) * policy.backoff(try_no)
            ctx.sleep(min(wait, policy.max_wait))
            continue
        crash_point("create.answered")
        ctx.created += 1
        log.info("shard %s: created batch %s (%d requests)", record.shard_id, info.batch_id, record.row_count)
        return ledger.advance(
            record,
            ShardState.SUBMITTED,
            note=f"created batch {info.batch_id}",
            batch_id=info.batch_id,
            provider_status=info.provider_status,
            error=None,
            error_type=None,
        )
    log.error("shard %s: not created after %d tries; left planned for the next run", record.shard_id, policy.attempts)
    return record


def _refused(ctx: RunContext, record: ShardRecord, exc: ProviderError) -> ShardRecord:
    """The provider refused the shard for good (400/413/422): its rows become error rows."""
    log.error("shard %s: refused by the provider: %s", record.shard_id, exc)
    return ctx.ledger.advance(
        record,
        ShardState.FAILED,
        note=f"refused: {exc}",
        error=f"the provider refused the batch: {exc}",
        error_type=ErrorType.INVALID_REQUEST.value,
    )


def submit_pending(ctx: RunContext) -> list[ShardRecord]:
    """Reconcile every open intent, then create planned shards within the token budget."""
    ledger = ctx.ledger
    for record in ledger.records():
        if record.state is ShardState.SUBMITTING:
            reconcile_intent(ctx, record)
    records = ledger.records()
    budget = ctx.config.batch.enqueued_token_budget
    enqueued: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        if r.state.in_flight:
            enqueued[(r.provider, r.model)] += r.est_input_tokens
    out = []
    for r in records:
        if r.state is ShardState.PLANNED:
            key = (r.provider, r.model)
            if budget is not None and enqueued[key] > 0 and enqueued[key] + r.est_input_tokens > budget:
                log.info("shard %s: waits for enqueued-token budget (%d + %d > %d)", r.shard_id, enqueued[key], r.est_input_tokens, budget)
                out.append(r)
                continue
            r = _create(ctx, r)
            if r.state.in_flight:
                enqueued[key] += r.est_input_tokens
        out.append(r)
    return out


def sweep_duplicates(ctx: RunContext) -> list[str]:
    """Batches tagged with this run that the ledger does not know (a create that landed, or showed
    in the list, after its shard was reconciled and created again): cancelled if still running,
    and reported once (kept in `ctx.duplicates`). Returns the ones new to this call.
    Only tagged (OpenAI) batches can be recognised this way."""
    records = ctx.ledger.records()
    intents = [r.intent_at for r in records if r.intent_at is not None]
    if not intents:
        return []
    known = {r.batch_id for r in records if r.batch_id} | ctx.duplicates
    since = min(intents) - timedelta(seconds=ctx.reconcile_skew_s)
    found: list[str] = []
    checked: set[int] = set()
    for queue in QUEUES:
        provider = ctx.provider(queue)
        if not provider.tags_batches or id(provider) in checked:
            continue
        checked.add(id(provider))
        for b in provider.list_batches(since):
            if b.metadata.get("run_id") == ctx.run_id and b.batch_id not in known:
                found.append(b.batch_id)
                ctx.duplicates.add(b.batch_id)
                log.error("run %s: batch %s (shard %s) is not in the ledger: a duplicate; %s",
                          ctx.run_id, b.batch_id, b.metadata.get("shard_id"),
                          "already ended" if b.state.terminal else "cancelling it")  # fmt: skip
                if not b.state.terminal:
                    provider.cancel(b.batch_id)
    return found


# -- the stage --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitSummary:
    run_id: str
    shards: int
    submitted: int
    """Shards with a batch (in flight or already finished)."""
    pending: int
    """Shards still planned: waiting for the token budget (wait/collect create them), or failing."""
    create_failures: int
    """Planned shards whose last create failed (transient errors past every retry): re-run submit."""
    refused: int
    rows_rejected: int
    batches_created: int
    batches_adopted: int
    by_queue: dict[str, int] = field(default_factory=dict)
    rows_added: int = 0
    """Rows a re-split added (new or re-routed), planned as a new plan version."""
    rows_left: int = 0
    """Planned rows no longer routed to their queue (left the input or re-routed); not published."""

    def render(self) -> str:
        resplit = f"; re-split: {self.rows_added} row(s) added, {self.rows_left} left their queue" if self.rows_added or self.rows_left else ""
        return (
            f"submit {self.run_id}: {self.shards} shard(s) {self.by_queue}, {self.submitted} with a batch "
            f"({self.batches_created} created now, {self.batches_adopted} found again), {self.pending} pending, "
            f"{self.refused} refused, {self.rows_rejected} row(s) rejected before submission{resplit}"
        )


def execute(
    config: RunConfig,
    run_date: date,
    *,
    providers: Mapping[str, BatchProvider] | None = None,
    provider_options: Mapping[str, Any] | None = None,
) -> SubmitSummary:
    require_prices(config)  # a model the report could not price fails here, before anything is billed
    ctx = open_run(config, run_date, providers=providers, provider_options=provider_options)
    try:
        plans = [plan_queue(ctx, queue) for queue in QUEUES]
        submit_pending(ctx)
        records = ctx.ledger.records()
        return SubmitSummary(
            run_id=ctx.run_id,
            shards=len(records),
            submitted=sum(1 for r in records if r.batch_id),
            pending=sum(1 for r in records if r.state is ShardState.PLANNED),
            create_failures=sum(1 for r in records if r.state is ShardState.PLANNED and r.error),
            refused=sum(1 for r in records if r.state is ShardState.FAILED and not r.batch_id),
            rows_rejected=sum(p.rejected for p in plans),
            batches_created=ctx.created,
            batches_adopted=ctx.adopted,
            by_queue={p.queue: len(p.shards) for p in plans},
            rows_added=sum(p.added for p in plans),
            rows_left=sum(p.left for p in plans),
        )
    finally:
        if providers is None:
            ctx.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    s = execute(config, args.run_date)
    print(s.render())
    return 1 if s.create_failures else 0
