"""The asynchronous driver's steps (an Airflow trigger's event loop): the same poll step and
transitions as `poll`, on the SDKs' async clients (AsyncOpenAI / AsyncAnthropic), with ledger file
I/O in a thread so the loop is never blocked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import date

from routellm_batch.batches.context import QUEUES, build_queue_provider
from routellm_batch.batches.poll import PollReport, apply_batch_info, needs_poll, poll_report
from routellm_batch.config import RunConfig
from routellm_batch.ledger import Ledger, ShardRecord
from routellm_batch.providers.base import BatchInfo, BatchProvider

__all__ = ["acancel_in_flight", "apoll_once"]

log = logging.getLogger(__name__)


async def apoll_once(
    config: RunConfig,
    run_date: date,
    *,
    providers: Mapping[str, BatchProvider] | None = None,
    concurrency: int = 8,
) -> PollReport:
    """`poll.poll_once` for an event loop.

    Builds (and closes) its own providers unless given some, so a trigger can call it with
    nothing but the config and the run date."""
    ledger = Ledger.for_run(config, run_date)
    owned = providers is None
    provs: dict[str, BatchProvider] = dict(providers or {})
    for queue in QUEUES:
        if queue not in provs:
            provs[queue] = build_queue_provider(config, queue)
    gate = asyncio.Semaphore(concurrency)
    infos: dict[str, BatchInfo] = {}

    async def one(record: ShardRecord) -> ShardRecord:
        if not needs_poll(record):
            return record
        assert record.batch_id is not None
        async with gate:
            info = infos[record.batch_id] = await provs[record.queue].aretrieve(record.batch_id)
        return await asyncio.to_thread(apply_batch_info, ledger, record, info)

    try:
        records = await asyncio.to_thread(ledger.records)
        updated = await asyncio.gather(*(one(r) for r in records))
    finally:
        if owned:
            for p in provs.values():
                await p.aclose()
                p.close()
    return poll_report(updated, infos)


async def acancel_in_flight(ledger: Ledger, providers: Mapping[str, BatchProvider]) -> list[ShardRecord]:
    """Cancel every batch still running (async clients); returns the records cancelled. The ledger
    records the end state when the next poll sees it, as for any other end."""
    cancelled = []
    for r in await asyncio.to_thread(ledger.records):
        if r.state.in_flight and r.batch_id:
            await providers[r.queue].acancel(r.batch_id)
            cancelled.append(r)
    return cancelled
