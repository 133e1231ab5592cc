"""What each light task of the nightly DAG does: one stage's public `execute`, keys from connections.

Every function is safe to run again (a retry, a cleared task): the stages resume from the run's
ledger and never create a second batch for a shard. Each returns a small JSON-able summary for XCom
(counts, USD as strings, URIs), never rows and never a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from routellm_batch.config import ConfigError, RunConfig, load_config
from routellm_batch.lease import run_lease
from routellm_batch.providers.base import BatchProvider

from routellm_airflow.credentials import ConnectionIds, build_providers, keys

if TYPE_CHECKING:
    from routellm_batch.batches import PollReport

__all__ = ["check_outputs", "collect", "load", "report", "submit", "wait_round", "wait_timeout_deadline"]


def load(config_path: str | None) -> RunConfig:
    """The run config, validated; configs that start their own sandbox cannot span Airflow tasks."""
    config = load_config(config_path or None)
    if config.sandbox.enabled:
        raise ConfigError(
            f"{config_path or 'the embedded demo config'}: sandbox.enabled starts a sandbox inside one process "
            "(`routellm-batch run`); for Airflow run `routellm-batch sandbox serve --state-dir DIR` and point "
            "strong.base_url / weak.base_url at it"
        )
    return config


@contextmanager
def _stage(
    config_path: str | None, run_date: date, stage: str, conns: ConnectionIds | None = None
) -> Iterator[tuple[RunConfig, dict[str, BatchProvider] | None]]:
    """The config, and providers holding the connections' keys, while holding the run date's lease
    (as the CLI does: one process per run date, whoever started it)."""
    config = load(config_path)
    with run_lease(config, run_date, stage=f"airflow:{stage}"):
        providers = build_providers(config, keys(config, conns)) if conns is not None else None
        try:
            yield config, providers
        finally:
            for p in (providers or {}).values():
                p.close()


def submit(config_path: str | None, run_date: date, conns: ConnectionIds) -> dict[str, Any]:
    from routellm_batch.stages import submit as stage

    with _stage(config_path, run_date, "submit", conns) as (config, providers):
        s = stage.execute(config, run_date, providers=providers)
    if s.create_failures:
        raise RuntimeError(f"{s.render()}; {s.create_failures} shard(s) could not be created: retry the task")
    return {
        "run_id": s.run_id, "shards": s.shards, "submitted": s.submitted, "pending": s.pending,
        "refused": s.refused, "rows_rejected": s.rows_rejected, "batches_created": s.batches_created,
        "batches_adopted": s.batches_adopted,
    }  # fmt: skip


def wait_round(config_path: str | None, run_date: date, conns: ConnectionIds) -> tuple[str, PollReport]:
    """One synchronous round of the lifecycle (`routellm_batch.batches.one_round`): create shards
    waiting for the token budget, poll every batch once, sweep for duplicate batches.
    Returns the run id and the round's report."""
    from routellm_batch.batches import one_round, open_run

    with _stage(config_path, run_date, "wait", conns) as (config, providers):
        ctx = open_run(config, run_date, providers=providers)
        return ctx.run_id, one_round(ctx)


def wait_timeout_deadline(hours: float) -> float:
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).timestamp()


def collect(config_path: str | None, run_date: date, conns: ConnectionIds, timeout_s: float | None) -> dict[str, Any]:
    from routellm_batch.stages import collect as stage

    with _stage(config_path, run_date, "collect", conns) as (config, providers):
        s = stage.execute(config, run_date, timeout=timeout_s, providers=providers)
    if not s.done:
        raise RuntimeError(f"{s.render()}; retry (or clear) this task to continue")
    return {
        "run_id": s.run_id, "rows": s.rows, "by_status": s.by_status, "responses": s.responses_uri,
        "shards": s.shards, "attempts": s.attempts,
    }  # fmt: skip


def report(config_path: str | None, run_date: date) -> dict[str, Any]:
    from routellm_batch.stages import report as stage

    with _stage(config_path, run_date, "report") as (config, _):
        s = stage.execute(config, run_date)
    total = next(r for r in s.rows if r["model"] == "all")
    return {
        "run_id": s.run_id, "cost_report": s.uri, "statuses": s.statuses, "requests": total["requests"],
        "cost_usd": str(total["cost_usd"]), "baseline_online_usd": str(total["baseline_online_usd"]),
        "savings_usd": str(total["savings_usd"]),
    }  # fmt: skip


def _partition(config: RunConfig, table: str, run_date: date, columns: list[str]):
    import pyarrow.dataset as ds

    from routellm_batch.ledger import filesystem_for

    fs, path = filesystem_for(f"{config.table_uri(table)}/run_date={run_date.isoformat()}")
    if fs.get_file_info(path).type.name != "Directory":
        return None
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table(columns=columns)


def check_outputs(config_path: str | None, run_date: date) -> dict[str, Any]:
    """The night's promises, from the tables themselves: every valid prompt routed once, every routed
    prompt with exactly one final outcome, the cost report written."""
    config = load(config_path)
    run_id = config.run_id(run_date)
    tables = {name: _partition(config, name, run_date, ["prompt_id"]) for name in ("prompts", "quarantine", "routed", "responses")}
    cost_report = _partition(config, "cost_report", run_date, ["model", "cost_usd"])
    missing = [name for name in ("prompts", "routed", "responses") if tables[name] is None]
    if cost_report is None:
        missing.append("cost_report")
    if missing:
        raise RuntimeError(f"{run_id}: no {', '.join(missing)} partition for this run date")
    ids = {name: (t.column("prompt_id").to_pylist() if t is not None else []) for name, t in tables.items()}
    problems = []
    for name in ("prompts", "routed", "responses"):
        if len(set(ids[name])) != len(ids[name]):
            problems.append(f"{name} has duplicate prompt ids")
    if set(ids["prompts"]) != set(ids["routed"]):
        problems.append(f"{len(set(ids['prompts']) ^ set(ids['routed']))} prompt(s) not routed exactly once")
    if set(ids["routed"]) != set(ids["responses"]):
        problems.append(f"{len(set(ids['routed']) ^ set(ids['responses']))} routed prompt(s) without exactly one outcome")
    if problems:
        raise RuntimeError(f"{run_id}: " + "; ".join(problems))
    cost = {r["model"]: str(r["cost_usd"]) for r in cost_report.to_pylist()}
    return {
        "run_id": run_id, "valid": len(ids["prompts"]), "quarantined": len(ids["quarantine"]),
        "routed": len(ids["routed"]), "responses": len(ids["responses"]), "cost_usd": cost.get("all"),
    }  # fmt: skip
