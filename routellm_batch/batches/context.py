"""The run's context: config, ledger and one provider per queue, shared by every lifecycle step."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from routellm_batch.config import ModelSpec, RunConfig
from routellm_batch.ledger import Ledger, ShardRecord
from routellm_batch.providers.base import BatchProvider, ShardPayload
from routellm_batch.providers.registry import build_provider

__all__ = ["QUEUES", "RunContext", "build_queue_provider", "open_run"]

QUEUES = ("strong", "weak")


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


def build_queue_provider(config: RunConfig, queue: str, **options: Any) -> BatchProvider:
    """The provider of one queue, with the run's create timeout, declared output and prompt-caching hints
    unless `options` names them."""
    options.setdefault("create_timeout_s", config.batch.create_timeout_seconds)
    options.setdefault("output", config.output)
    options.setdefault("prompt_caching", config.prompt_caching)
    return build_provider(config.strong if queue == "strong" else config.weak, **options)


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
    for queue in QUEUES:
        if queue not in built:
            built[queue] = build_queue_provider(config, queue, **options)
    return RunContext(config=config, run_date=run_date, ledger=Ledger.for_run(config, run_date), providers=built)
