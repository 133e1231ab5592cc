"""The poll step: one retrieve's BatchInfo applied to the ledger, and one round of the lifecycle.

No loop and no sleep here: the wait stage (sync) and the Airflow trigger (async, `aio`) decide
when to poll again. Terminal batches (completed, failed, expired, cancelled) are never polled again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from routellm_batch.batches.context import RunContext
from routellm_batch.batches.create import submit_pending
from routellm_batch.batches.reconcile import sweep_duplicates
from routellm_batch.ledger import Ledger, ShardRecord, ShardState
from routellm_batch.providers.base import BatchInfo, BatchState

__all__ = ["PollReport", "apply_batch_info", "needs_poll", "one_round", "poll_once", "poll_report"]

_SHARD_STATE = {
    BatchState.COMPLETED: ShardState.COMPLETED,
    BatchState.FAILED: ShardState.FAILED,
    BatchState.EXPIRED: ShardState.EXPIRED,
    BatchState.CANCELLED: ShardState.CANCELLED,
}


@dataclass(frozen=True)
class PollReport:
    states: dict[str, str]
    """shard_id -> ledger state after this round."""
    in_flight: int
    """Shards whose batch is not terminal yet (or whose create is unresolved)."""
    planned: int
    """Shards not submitted yet (token budget, or create failures)."""
    records: list[ShardRecord] = field(default_factory=list)
    """Every shard's record after this round."""
    infos: dict[str, BatchInfo] = field(default_factory=dict)
    """batch_id -> what the provider said this round (its own request counts among it)."""
    duplicates: tuple[str, ...] = ()
    """Set by `one_round`: batches tagged with this run but unknown to the ledger (cancelled if running)."""

    @property
    def done(self) -> bool:
        return self.in_flight == 0 and self.planned == 0

    @property
    def counts(self) -> dict[str, int]:
        """ledger state -> number of shards in it."""
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        return out


def needs_poll(record: ShardRecord) -> bool:
    return record.state is ShardState.SUBMITTED and bool(record.batch_id)


def apply_batch_info(ledger: Ledger, record: ShardRecord, info: BatchInfo) -> ShardRecord:
    """Record what one retrieve said: a new provider status, or the terminal state."""
    if info.state.terminal:
        failure = info.failure
        return ledger.advance(
            record,
            _SHARD_STATE[info.state],
            note=f"provider status {info.provider_status}" + (f": {failure.message}" if failure else ""),
            provider_status=info.provider_status,
            error=failure.message if failure else None,
            error_type=failure.error_type.value if failure else None,
        )
    if info.provider_status != record.provider_status:
        return ledger.advance(
            record, ShardState.SUBMITTED, note=f"provider status {info.provider_status}", provider_status=info.provider_status
        )
    return record


def poll_report(records: Iterable[ShardRecord], infos: dict[str, BatchInfo] | None = None) -> PollReport:
    records = list(records)
    return PollReport(
        states={r.shard_id: r.state.value for r in records},
        in_flight=sum(1 for r in records if r.state.in_flight),
        planned=sum(1 for r in records if r.state is ShardState.PLANNED),
        records=records,
        infos=dict(infos or {}),
    )


def poll_once(ctx: RunContext) -> PollReport:
    """Retrieve every submitted batch once and record changes (sync clients)."""
    out = []
    infos: dict[str, BatchInfo] = {}
    for record in ctx.ledger.records():
        if needs_poll(record):
            assert record.batch_id is not None
            info = infos[record.batch_id] = ctx.provider(record.queue).retrieve(record.batch_id)
            record = apply_batch_info(ctx.ledger, record, info)
        out.append(record)
    return poll_report(out, infos)


def one_round(ctx: RunContext) -> PollReport:
    """One round of the lifecycle: reconcile and create what is pending (shards waiting for the
    enqueued-token budget), poll every batch once, and sweep for duplicate batches (one that shows
    in the list late is cancelled while it still runs, before it is billed)."""
    submit_pending(ctx)
    report = poll_once(ctx)
    sweep_duplicates(ctx)
    return replace(report, duplicates=tuple(sorted(ctx.duplicates)))
