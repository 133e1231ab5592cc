"""The deferrable wait: a trigger polling one run's batches on the SDKs' async clients.

The trigger is the lifecycle's asynchronous driver: each poll is `routellm_batch.batches.aio.apoll_once`
(AsyncOpenAI / AsyncAnthropic for the API, ledger file I/O in a thread), so the triggerer's event loop
is never blocked and every status change is recorded in the run's ledger by the same step as the CLI's
`wait` uses. The provider's own request counts come back in the poll's report. The trigger fires when no
batch of the run is in flight any more.

Its whole state is where to find the run (config path, run date, the ledger location for humans)
and its settings: a restarted triggerer rebuilds it from `serialize()` and the ledger.

On the overall deadline it fires a `timeout` event; the batches are left running (the provider keeps
working on them, and they are paid for) unless `cancel_on_timeout` is set, in which case every
batch still in flight is cancelled first.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from routellm_batch.batches import PollReport
from routellm_batch.batches.aio import acancel_in_flight, apoll_once
from routellm_batch.config import RunConfig, load_config
from routellm_batch.ledger import Ledger, ShardRecord
from routellm_batch.providers.base import BatchInfo, BatchProvider
from routellm_batch.providers.errors import ProviderError

from routellm_airflow.credentials import ConnectionIds, akeys, build_providers

__all__ = ["RunBatchesTrigger", "progress_line"]


def progress_line(run_id: str, poll: int, records: list[ShardRecord], infos: dict[str, BatchInfo]) -> str:
    """One line per poll: per queue, batches ended and requests in ended batches, and what the
    provider says about the batches still running."""
    parts = []
    by_queue: dict[str, list[ShardRecord]] = defaultdict(list)
    for r in records:
        by_queue[r.queue].append(r)
    for queue, rs in sorted(by_queue.items()):
        ended = [r for r in rs if not r.state.in_flight and r.batch_id]
        counts: dict[str, int] = defaultdict(int)
        for r in rs:
            info = infos.get(r.batch_id or "")
            if info is not None and r.state.in_flight:
                for k, v in info.request_counts.items():
                    counts[k] += v
        provider = f"; provider counts {dict(counts)}" if counts else ""
        parts.append(
            f"{queue}: {len(ended)}/{len(rs)} batch(es) ended, "
            f"{sum(r.row_count for r in ended)}/{sum(r.row_count for r in rs)} request(s) in ended batches{provider}"
        )
    return f"run {run_id} poll {poll}: " + ("; ".join(parts) or "no shards")


class RunBatchesTrigger(BaseTrigger):
    """Fires `{"status": "done" | "timeout" | "error", ...}` for one run's batches."""

    def __init__(
        self,
        *,
        config_path: str | None,
        run_date: str,
        ledger_uri: str,
        deadline: float,
        poll_interval: float,
        cancel_on_timeout: bool = False,
        connections: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.config_path = config_path
        self.run_date = run_date
        self.ledger_uri = ledger_uri
        self.deadline = float(deadline)
        """Epoch seconds; absolute, so that a triggerer restart does not restart the clock."""
        self.poll_interval = float(poll_interval)
        self.cancel_on_timeout = bool(cancel_on_timeout)
        self.connections = dict(connections or ConnectionIds().as_dict())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "config_path": self.config_path,
                "run_date": self.run_date,
                "ledger_uri": self.ledger_uri,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "cancel_on_timeout": self.cancel_on_timeout,
                "connections": self.connections,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        config: RunConfig = await asyncio.to_thread(load_config, self.config_path)
        run_date = date.fromisoformat(self.run_date)
        ledger = Ledger.for_run(config, run_date)
        if config.table_uri("ledger") != self.ledger_uri:
            # The config file was changed under a deferred task: polling another run's ledger would be wrong.
            message = f"{self.config_path} now puts the ledger at {config.table_uri('ledger')}, not {self.ledger_uri}"
            yield TriggerEvent(self._event("error", ledger, 0, message=message))
            return
        providers = build_providers(config, await akeys(config, ConnectionIds(**self.connections)))
        poll = 0
        try:
            while True:
                poll += 1
                try:
                    report: PollReport | None = await apoll_once(config, run_date, providers=providers)
                except ProviderError as exc:
                    if not exc.error_type.retryable:
                        yield TriggerEvent(self._event("error", ledger, poll, message=str(exc)))
                        return
                    # Past the provider's own retries (an outage, a restart): the next poll tries again.
                    self.log.warning("run %s poll %d: provider unavailable, polling again later: %s", ledger.run_id, poll, exc)
                    report = None
                if report is not None:
                    self.log.info("%s", progress_line(ledger.run_id, poll, report.records, report.infos))
                    if report.in_flight == 0:
                        yield TriggerEvent(self._event("done", ledger, poll, states=report.counts))
                        return
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    cancelled = await self._cancel_in_flight(ledger, providers) if self.cancel_on_timeout else []
                    yield TriggerEvent(self._event("timeout", ledger, poll, cancelled=cancelled))
                    return
                await asyncio.sleep(min(self.poll_interval, remaining))
        finally:
            for p in providers.values():
                await p.aclose()
                p.close()

    def _event(self, status: str, ledger: Ledger, polls: int, **extra: Any) -> dict[str, Any]:
        # The deadline travels back so that a wait deferred again keeps the same overall limit.
        return {"status": status, "run_id": ledger.run_id, "polls": polls, "deadline": self.deadline, **extra}

    async def _cancel_in_flight(self, ledger: Ledger, providers: dict[str, BatchProvider]) -> list[str]:
        """Cancel every batch still running (only when asked to: cancelled requests are not answered)."""
        cancelled = await acancel_in_flight(ledger, providers)
        for r in cancelled:
            self.log.warning("run %s: cancelled batch %s (shard %s) at the wait deadline", ledger.run_id, r.batch_id, r.shard_id)
        return [r.batch_id for r in cancelled if r.batch_id]
