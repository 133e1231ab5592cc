"""The batch lifecycle, once, below the stages: plan -> intent -> created -> terminal -> collected.

    context    the run's context (config, ledger, one provider per queue)
    routed     reading the routed table
    plan       plans (shard inputs, maps, `planned` records) and the retry decision
    reconcile  resolving an intent against the provider's batch list; the duplicate sweep
    create     creating planned shards' batches, intent first
    outcomes   per-request outcomes in the ledger, and the responses table built from them
    poll       applying a retrieve to the ledger; one round (create pending + poll + sweep)
    aio        the same poll step on async clients, and an async cancel (the Airflow trigger)

No I/O loop lives here: the stages (submit / wait / collect) drive it synchronously and the
Airflow trigger asynchronously; neither changes a shard's state except through these functions.
Light: pyarrow and the SDKs (inside the providers); no Spark.
"""

from __future__ import annotations

from routellm_batch.batches.context import QUEUES, RunContext, build_queue_provider, open_run
from routellm_batch.batches.create import submit_pending
from routellm_batch.batches.plan import PlanResult, plan_queue, plan_retries, superseded_plans
from routellm_batch.batches.poll import PollReport, apply_batch_info, one_round, poll_once
from routellm_batch.batches.reconcile import reconcile_intent, sweep_duplicates
from routellm_batch.batches.routed import routed_prompt_ids, routed_row_count

__all__ = [
    "QUEUES",
    "PlanResult",
    "PollReport",
    "RunContext",
    "apply_batch_info",
    "build_queue_provider",
    "one_round",
    "open_run",
    "plan_queue",
    "plan_retries",
    "poll_once",
    "reconcile_intent",
    "routed_prompt_ids",
    "routed_row_count",
    "submit_pending",
    "superseded_plans",
    "sweep_duplicates",
]
