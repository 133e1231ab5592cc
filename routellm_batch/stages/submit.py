"""Stage 4: shard each queue into provider batches and create them, never paying twice.

    routellm-batch submit --config C --run-date D

1. Plan (once per queue and attempt): stream the routed rows (pyarrow.dataset), render each into
   a request, pack requests into shards within every limit, write each shard's input and
   custom_id map, then its ledger record (`planned`), then the plan marker. A crash before the
   marker re-plans from scratch; no batch can exist yet then.
2. Reconcile: a record left in `submitting` (a crash, or a create whose answer was lost) is
   looked up in the provider's batch list first: OpenAI by our metadata (run_id, shard_id);
   Anthropic, which has no metadata, by time window + request count + custom_ids (see
   `routellm_batch.batches.reconcile` for the residual risk). A shard whose batch exists is never created again.
3. Create: record the intent (`submitting`, with its time) BEFORE the call, the batch id right
   after it. The SDKs' own retries are off (max_retries=0); a failed create is retried here only
   when it certainly did not land (a 4xx answer) or after reconciling found no batch.

Per-model enqueued-token budget: a shard is created only while the estimated prompt tokens of
the model's open batches plus its own stay within `batch.enqueued_token_budget`; the rest stay
`planned` and `wait` / `collect` create them as batches finish.

The lifecycle itself (plan, reconcile, create) lives in `routellm_batch.batches`; this stage
drives it once. Light module: pyarrow + the SDKs (inside the providers); no Spark.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from routellm_batch.batches import QUEUES, open_run, plan_queue, submit_pending
from routellm_batch.config import RunConfig, load_config
from routellm_batch.ledger import ShardState
from routellm_batch.providers.base import BatchProvider
from routellm_batch.providers.pricing import require_prices
from routellm_batch.stages import add_run_arguments

__all__ = ["SubmitSummary", "add_arguments", "execute", "run"]


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
