"""The nightly job: every stage of one run date, in order, each reading the table the last one wrote.

    routellm-batch nightly --run-date D [--config C]

With no --config it runs the embedded demo (local Spark, the shipped router, the sandbox provider
replaying recorded answers). Every stage is idempotent, so re-running a failed night resumes it:
validate/score/split rewrite their date's partitions, submit reconciles with the ledger and the
providers' batch lists before creating anything, collect never downloads or pays twice.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import date

from routellm_batch.config import RunConfig, load_config
from routellm_batch.stages import add_run_arguments

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sandboxed(config: RunConfig) -> Iterator[RunConfig]:
    """When `sandbox.enabled`, serve the batch APIs on 127.0.0.1 and point both models at it."""
    if not config.sandbox.enabled:
        yield config
        return
    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer.from_settings(config.sandbox) as server:
        urls = {"openai": server.openai_base_url, "anthropic": server.anthropic_base_url}
        models = {
            role: spec.model_copy(update={"base_url": urls[spec.provider]})
            for role, spec in (("strong", config.strong), ("weak", config.weak))
        }
        # The sandbox only checks that a key is sent; a real key in the environment never leaves this host.
        added = [spec.api_key_env for spec in models.values() if spec.api_key_env not in os.environ]
        os.environ.update({name: "sandbox" for name in added})
        try:
            log.info("sandbox provider serving on %s", server.anthropic_base_url)
            yield config.model_copy(update=models)
        finally:
            for name in added:
                os.environ.pop(name, None)


def execute(config: RunConfig, run_date: date) -> list[str]:
    """Run every stage; returns each stage's printable summary, in order."""
    from routellm_batch.spark.session import get_spark
    from routellm_batch.stages import collect, report, split, submit, validate, wait

    spark = get_spark(config.spark, app_name=f"{config.job_name}:nightly")
    summaries = [validate.execute(config, run_date, spark).render()]
    summaries.append(split.score_and_split(config, run_date, spark).render())
    with sandboxed(config) as live:
        summaries.append(submit.execute(live, run_date).render())
        summaries.append(wait.execute(live, run_date).render())
        summaries.append(collect.execute(live, run_date).render())
    summaries.append(report.execute(config, run_date).render())
    return summaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    run_date = args.run_date
    for text in execute(config, run_date):
        print(text, end="\n\n", flush=True)
    print(f"tables under {config.output_root}: prompts, quarantine, routed, responses, cost_report, ledger")
    return 0
