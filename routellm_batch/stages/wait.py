"""Stage 5: poll until every batch of the run is terminal, recording each change in the ledger.

    routellm-batch wait --config C --run-date D [--timeout SECONDS]

The synchronous driver of the lifecycle (`routellm_batch.batches`): `drive` repeats its
`one_round` (reconcile / create what is pending, such as shards waiting for the enqueued-token
budget; poll every batch once; sweep for duplicates), sleeping `batch.poll_interval_seconds`
between rounds, until nothing is in flight. The Airflow trigger drives the same steps on async
clients (`routellm_batch.batches.aio`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from routellm_batch.batches import PollReport, RunContext, one_round, open_run
from routellm_batch.config import RunConfig, load_config
from routellm_batch.providers.base import BatchProvider
from routellm_batch.stages import add_run_arguments

__all__ = ["WaitSummary", "add_arguments", "drive", "execute", "run"]


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
    """Run lifecycle rounds until nothing is in flight (or the timeout)."""
    start = time.monotonic()
    polls = 0
    while True:
        report = one_round(ctx)
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
    finally:
        if providers is None:
            ctx.close()
    return WaitSummary(ctx.run_id, report.done, polls, time.monotonic() - start, report.counts, list(report.duplicates))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 3)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    s = execute(config, args.run_date, timeout=args.timeout)
    print(s.render())
    return 0 if s.done else 3
