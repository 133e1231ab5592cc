"""Reconciliation: resolve a `submitting` record against the provider's batch list, and sweep
the run's batches for duplicates. A shard whose batch exists is never created again."""

from __future__ import annotations

import logging
from datetime import timedelta

import pyarrow.parquet as pq

from routellm_batch.batches.context import QUEUES, RunContext
from routellm_batch.ledger import Ledger, ShardRecord, ShardState, utcnow
from routellm_batch.providers.base import BatchInfo, BatchProvider
from routellm_batch.providers.retry import call_with_retries

__all__ = ["SETTLE_SECONDS", "reconcile_intent", "sweep_duplicates"]

log = logging.getLogger(__name__)


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
