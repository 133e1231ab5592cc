"""Creating planned shards' batches: the intent is recorded BEFORE each create, the batch id right after."""

from __future__ import annotations

import logging
import random
from collections import defaultdict

from routellm_batch.batches.context import RunContext
from routellm_batch.batches.reconcile import reconcile_intent
from routellm_batch.crashpoints import crash_point
from routellm_batch.ledger import ShardRecord, ShardState, utcnow
from routellm_batch.providers.errors import ErrorType, ProviderError, StopRunError, TerminalProviderError

__all__ = ["submit_pending"]

log = logging.getLogger(__name__)


def _metadata(record: ShardRecord) -> dict[str, str]:
    return {"run_id": record.run_id, "shard_id": record.shard_id, "attempt": str(record.attempt), "producer": "routellm-batch"}


def _create(ctx: RunContext, record: ShardRecord) -> ShardRecord:
    """Create one planned shard's batch (see the submit stage's module doc for the protocol)."""
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
