"""Planning: routed rows -> shard inputs, maps and `planned` records; the retry decision.

A plan is written whole before its marker: a crash before the marker re-plans from scratch (no
batch can exist yet then). `plan_retries` decides which rows get attempt N+1.

Attempt 1 sends each distinct request once: a row whose request (same model, same body: the same
`request_key`) was already planned in this plan is a duplicate of that first row, and a row whose
request has an unexpired answer in the answer cache is answered from it; both are recorded (see
`routellm_batch.batches.served`) before the plan marker, so a re-run never sends them.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from routellm_batch.answer_cache import CacheIndex, load_index, request_key
from routellm_batch.batches.context import QUEUES, RunContext
from routellm_batch.batches.routed import iter_routed_rows
from routellm_batch.ledger import Ledger, ShardRecord, ShardState
from routellm_batch.providers.base import BatchRequest
from routellm_batch.providers.custom_id import make_custom_id
from routellm_batch.providers.errors import ErrorType
from routellm_batch.providers.sharding import PackedRequest, ShardLimits, ShardPacker, shard_id
from routellm_batch.batches.outcomes import OutcomeWriter, error_row, iter_outcome_batches
from routellm_batch.batches.served import ServedWriter, cache_rel, served_prompt_ids
from routellm_batch.providers.pricing import USAGE_COLUMNS

__all__ = ["PlanResult", "plan_queue", "plan_retries", "superseded_plans"]

log = logging.getLogger(__name__)

MAP_SCHEMA = pa.schema(
    [
        pa.field("custom_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("est_input_tokens", pa.int64(), nullable=False),
        pa.field("request_key", pa.string()),
    ]
)


@dataclass
class _Candidate:
    prompt_id: str
    est_tokens: int
    body: Mapping[str, Any] | None
    error: tuple[ErrorType, str] | None = None


class _ShardWriter:
    """Streams one shard's input lines to the ledger; on close writes its map, then its record."""

    def __init__(
        self, ctx: RunContext, queue: str, attempt: int, index: int, version: int, keys: dict[str, str]
    ) -> None:
        self.ctx, self.queue, self.attempt, self.index, self.version = ctx, queue, attempt, index, version
        self._pending_keys = keys  # custom_id -> request key, filled by the planner, taken here
        self.shard_id = shard_id(ctx.run_id, Ledger.lane(queue, version), attempt, index)
        self._cm = ctx.ledger.open_output(Ledger.input_rel(self.shard_id))
        self._out = self._cm.__enter__()
        self._cids: list[str] = []
        self._pids: list[str] = []
        self._tokens: list[int] = []
        self._keys: list[str | None] = []
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
        self._keys.append(self._pending_keys.pop(item.custom_id, None))

    def close(self) -> ShardRecord:
        self._cm.__exit__(None, None, None)
        ledger = self.ctx.ledger
        table = pa.table(
            {"custom_id": self._cids, "prompt_id": self._pids, "est_input_tokens": self._tokens, "request_key": self._keys},
            schema=MAP_SCHEMA,
        )
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
    deduped: int = 0
    """Rows not sent: an identical request of this plan answers them."""
    cached: int = 0
    """Rows not sent: answered from the answer cache."""


def _custom_id_key(run_id: str, version: int) -> str:
    # Each plan version has its own custom_ids, so a prompt re-routed back and forth never shares one.
    return run_id if version == 1 else f"{run_id}/v{version}"


def _build_plan(
    ctx: RunContext, queue: str, attempt: int, candidates: Iterable[_Candidate], version: int = 1, **extra: Any
) -> PlanResult:
    ledger, provider, spec, config = ctx.ledger, ctx.provider(queue), ctx.spec(queue), ctx.config
    limits = ShardLimits.for_provider(provider.limits, config.batch)
    keys: dict[str, str] = {}
    packer: ShardPacker[ShardRecord] = ShardPacker(limits, lambda i: _ShardWriter(ctx, queue, attempt, i, version, keys))
    max_attempts = config.batch.max_attempts
    lane = Ledger.lane(queue, version)
    rejected = OutcomeWriter(ledger, Ledger.rejected_rel(lane, attempt))
    # Attempt 1 serves what it can without a request (retries hold representatives only).
    serve = attempt == 1
    served = ServedWriter(ledger, queue, lane)
    cache = load_index(config, spec.provider, spec.model) if serve else None
    from_cache = OutcomeWriter(ledger, cache_rel(lane)) if cache is not None else None
    first_of: dict[bytes, str] = {}  # request key digest -> the first prompt planned with it
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
            rkey = base["request_key"] = request_key(config.answer_cache.version, spec.provider, spec.model, c.body)
            if serve and _served(c.prompt_id, rkey, base, cache, from_cache, served, first_of, config.dedupe):
                continue
            keys[cid] = rkey
            item = PackedRequest(c.prompt_id, cid, provider.serialize_request(BatchRequest(cid, c.body)), c.est_tokens)
            if not packer.fits_alone(item):
                msg = f"serialized request is {len(item.line)} bytes, over the batch limit of {limits.max_bytes} bytes"
                rejected.add(error_row(base, ErrorType.REQUEST_TOO_LARGE, msg, max_attempts=max_attempts))
                del keys[cid]
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
        if from_cache is not None:
            from_cache.abort()
        raise
    rejected.commit()
    if from_cache is not None:
        from_cache.commit()
    elif serve and ledger.exists(cache_rel(lane)):  # left by a plan that crashed before its marker, cache on then
        ledger.fs.delete_file(ledger.path(cache_rel(lane)))
    if serve:
        served.commit()
    ledger.write_plan(lane, attempt, [r.shard_id for r in shards], rejected.count, version=version,
                      deduped=served.dedupe, cached=served.cache, **extra)  # fmt: skip
    log.info(
        "planned %s attempt %d: %d shard(s), %d row(s) rejected before submission, %d served by dedupe, %d from the answer cache",
        lane, attempt, len(shards), rejected.count, served.dedupe, served.cache,
    )  # fmt: skip
    return PlanResult(queue, attempt, shards, rejected.count, reused=False, added=int(extra.get("added", 0)),
                      deduped=served.dedupe, cached=served.cache)  # fmt: skip


def _served(
    prompt_id: str,
    rkey: str,
    base: dict[str, Any],
    cache: CacheIndex | None,
    from_cache: OutcomeWriter | None,
    served: ServedWriter,
    first_of: dict[bytes, str],
    dedupe: bool,
) -> bool:
    """Serve a row without a request when the answer cache or an earlier row of the plan answers it."""
    hit = cache.get(rkey) if cache is not None else None
    if hit is not None:
        assert from_cache is not None
        from_cache.add({
            **base, "status": "succeeded", "response_text": hit.response_text, "finish_reason": hit.finish_reason,
            **dict.fromkeys(USAGE_COLUMNS), "error_type": None, "error_message": None, "served_by": "cache",
            "retryable": False, "final": True,
        })  # fmt: skip
        served.cached(prompt_id, rkey, hit.usage)
        return True
    if dedupe:
        digest = bytes.fromhex(rkey)
        first = first_of.setdefault(digest, prompt_id)
        if first != prompt_id:
            served.duplicate(prompt_id, first, rkey)
            return True
    return False


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
        out.update(served_prompt_ids(ledger, lane))  # duplicates and cache hits: planned, never sent
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
