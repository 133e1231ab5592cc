"""Stage 5: poll until every batch of the run is terminal, recording each change in the ledger.

    routellm-batch wait --config C --run-date D [--timeout SECONDS]

`poll_once` (sync) and `apoll_once` (async, AsyncOpenAI / AsyncAnthropic, for an Airflow
deferrable trigger's event loop) do one round: retrieve every submitted batch and record
status changes. `execute` loops: reconcile / create what is pending (shards waiting for the
enqueued-token budget), poll, sleep `batch.poll_interval_seconds`, until nothing is in flight.
Terminal batches (completed, failed, expired, cancelled) are never polled again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from routellm_batch.config import RunConfig, load_config
from routellm_batch.stages import add_run_arguments
from routellm_batch.ledger import Ledger, ShardRecord, ShardState
from routellm_batch.providers.base import BatchInfo, BatchProvider, BatchState
from routellm_batch.providers.registry import build_provider
from routellm_batch.stages.submit import QUEUES, RunContext, open_run, submit_pending, sweep_duplicates

__all__ = ["PollReport", "WaitSummary", "add_arguments", "apoll_once", "apply_batch_info", "execute", "poll_once", "run"]

log = logging.getLogger(__name__)

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

    @property
    def done(self) -> bool:
        return self.in_flight == 0 and self.planned == 0


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


def _report(records: list[ShardRecord]) -> PollReport:
    return PollReport(
        states={r.shard_id: r.state.value for r in records},
        in_flight=sum(1 for r in records if r.state.in_flight),
        planned=sum(1 for r in records if r.state is ShardState.PLANNED),
    )


def poll_once(ctx: RunContext) -> PollReport:
    """Retrieve every submitted batch once and record changes (sync clients)."""
    out = []
    for record in ctx.ledger.records():
        if record.state is ShardState.SUBMITTED and record.batch_id:
            info = ctx.provider(record.queue).retrieve(record.batch_id)
            record = apply_batch_info(ctx.ledger, record, info)
        out.append(record)
    return _report(out)


async def apoll_once(
    config: RunConfig,
    run_date: date,
    *,
    providers: Mapping[str, BatchProvider] | None = None,
    concurrency: int = 8,
) -> PollReport:
    """`poll_once` for an event loop: async SDK clients for the API, file I/O in a thread.

    Builds (and closes) its own providers unless given some, so a trigger can call it with
    nothing but the config and the run date."""
    ledger = Ledger.for_run(config, run_date)
    owned = providers is None
    provs: dict[str, BatchProvider] = dict(providers or {})
    for queue in QUEUES:
        if queue not in provs:
            provs[queue] = build_provider(config.strong if queue == "strong" else config.weak)
    gate = asyncio.Semaphore(concurrency)

    async def one(record: ShardRecord) -> ShardRecord:
        if record.state is not ShardState.SUBMITTED or not record.batch_id:
            return record
        async with gate:
            info = await provs[record.queue].aretrieve(record.batch_id)
        return await asyncio.to_thread(apply_batch_info, ledger, record, info)

    try:
        records = await asyncio.to_thread(ledger.records)
        updated = await asyncio.gather(*(one(r) for r in records))
    finally:
        if owned:
            for p in provs.values():
                await p.aclose()
                p.close()
    return _report(list(updated))


@dataclass(frozen=True)
class WaitSummary:
    run_id: str
    done: bool
    polls: int
    seconds: float
    states: dict[str, int]
    duplicate_batches: list[str]
    """Batches tagged with this run but unknown to the ledger (should be empty; cancelled if running)."""

    def render(self) -> str:
        head = "all batches terminal" if self.done else "NOT done"
        dup = f"; DUPLICATE batches found: {self.duplicate_batches}" if self.duplicate_batches else ""
        return f"wait {self.run_id}: {head} after {self.polls} poll(s), {self.seconds:.1f}s: {self.states}{dup}"


def drive(ctx: RunContext, *, timeout: float | None, poll_interval: float) -> tuple[PollReport, int]:
    """Submit what is pending and poll until nothing is in flight (or the timeout).

    Each round also sweeps for duplicate batches: one that shows in the list late is cancelled
    while it still runs, before it is billed, not only reported once everything has ended."""
    start = time.monotonic()
    polls = 0
    while True:
        submit_pending(ctx)
        report = poll_once(ctx)
        sweep_duplicates(ctx)
        polls += 1
        if report.in_flight == 0:
            # Done, or planned shards whose create failed even with nothing enqueued: a re-run retries them.
            return report, polls
        if timeout is not None and time.monotonic() - start >= timeout:
            return report, polls
        ctx.sleep(poll_interval)


def execute(
    config: RunConfig,
    run_date: date,
    *,
    timeout: float | None = None,
    providers: Mapping[str, BatchProvider] | None = None,
    provider_options: Mapping[str, Any] | None = None,
) -> WaitSummary:
    ctx = open_run(config, run_date, providers=providers, provider_options=provider_options)
    start = time.monotonic()
    try:
        report, polls = drive(ctx, timeout=timeout, poll_interval=config.batch.poll_interval_seconds)
        duplicates = sorted(ctx.duplicates)
    finally:
        if providers is None:
            ctx.close()
    counts: dict[str, int] = {}
    for state in report.states.values():
        counts[state] = counts.get(state, 0) + 1
    return WaitSummary(ctx.run_id, report.done, polls, time.monotonic() - start, counts, duplicates)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 3)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    s = execute(config, args.run_date, timeout=args.timeout)
    print(s.render())
    return 0 if s.done else 3
