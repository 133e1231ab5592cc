"""Stage 7, report: the run's cost account from provider-reported usage and the versioned price table.

Light (pyarrow + Decimal arithmetic): runs on an Airflow worker without Spark. Before it prices
anything it checks the run's central invariant: every routed prompt has exactly one final outcome.

Per model (and one `all` row): requests billed, reported tokens of every kind (input, cache reads,
5-minute and 1-hour cache writes, output, reasoning; each priced at its own rate), the batch cost, and two
baselines for the same tokens at the strong model's price: in batch (`baseline_all_strong_usd`) and
online (`baseline_online_usd`, what answering everything with the strong model online would cost);
`savings_usd` = online baseline - cost. Rows answered without a request of their own (served by dedupe: an
identical request of the run; or from the answer cache) are counted apart (`dedupe_requests`,
`cache_requests`) with the USD they avoided, the batch price of the tokens their representative / their
cached answer used; the baselines count those tokens too (a per-row submission would have paid them), so
they are part of the savings. The baselines price the weak model's reported token counts at
the strong model's rates, an approximation (the strong model would have used its own tokenizer and
written answers of its own length); the cost itself is exact.

A cascade run bills both passes: pass-2 strong answers on their own `escalated` line, and the weak
answers they superseded still on the weak line (they were paid), where they count in requests, tokens
and cost but not in the baselines (those answer each prompt once). The nightly audit slice's answers and
judge verdicts (routellm_batch.audit_runs) are billed the same way, on an `audit` line. An `unparsable`
answer was generated and paid: billed like a succeeded one, and so is each earlier attempt of a prompt whose
unparsable answer was asked again (on the line of the queue that asked it, from the ledger's outcomes).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from routellm_batch.audit_runs import billed_usage
from routellm_batch.batches.outcomes import BILLED_STATUSES, paid_retried_answers
from routellm_batch.batches.served import read_served
from routellm_batch.config import RunConfig, load_config
from routellm_batch.output_suite import check_cost_report
from routellm_batch.stages import add_run_arguments
from routellm_batch.ledger import Ledger, atomic_output, filesystem_for
from routellm_batch.providers.pricing import USAGE_COLUMNS, TokenUsage, batch_discount, price_table_for, stored_usd
from routellm_batch.schemas import arrow_schema

__all__ = [
    "OutcomeInvariantError", "QueueOutcomes", "ReportSummary", "add_arguments", "check_one_outcome_per_prompt", "cost_rows",
    "execute", "queue_outcomes", "run",
]

log = logging.getLogger(__name__)


class OutcomeInvariantError(RuntimeError):
    """Some routed prompt has no final outcome, or more than one: nothing is reported."""


FAILED_STATUSES = ("errored", "expired", "canceled")
TOP_ERRORS = 3


@dataclass(frozen=True)
class QueueOutcomes:
    """How one queue's prompts ended: rows per status and the most frequent error types."""

    queue: str
    succeeded: int = 0
    errored: int = 0
    expired: int = 0
    canceled: int = 0
    top_errors: tuple[tuple[str, int], ...] = ()
    """(error_type, rows), most frequent first, at most TOP_ERRORS."""

    @property
    def failed(self) -> int:
        return self.errored + self.expired + self.canceled

    def render(self) -> str:
        counts = ", ".join(f"{getattr(self, s)} {s}" for s in ("succeeded", *FAILED_STATUSES))
        errors = f"; top errors: {', '.join(f'{e} {n}' for e, n in self.top_errors)}" if self.top_errors else ""
        return f"{self.queue}: {counts}{errors}"


@dataclass(frozen=True)
class ReportSummary:
    run_id: str
    uri: str
    rows: list[dict]
    statuses: dict[str, int]
    outcomes: dict[str, QueueOutcomes]
    """Per queue (strong, weak): succeeded, errored, expired and canceled rows, top error types."""

    def render(self) -> str:
        head = (
            f"{'model':<20} {'queue':<9} {'requests':>8} {'in tok':>9} {'cached':>9} {'cache wr':>9} {'out tok':>9} "
            f"{'reasoning':>9} {'cost $':>10} {'all-strong batch $':>19} {'all-strong online $':>20} {'saved $':>10}"
        )
        lines = [f"cost report {self.run_id} (price table {self.rows[-1]['price_table_version']}):", head]
        for r in self.rows:
            writes = r["cache_write_5m_tokens"] + r["cache_write_1h_tokens"]
            lines.append(
                f"{r['model']:<20} {r['queue']:<9} {r['requests']:>8} {r['input_tokens']:>9} {r['cached_input_tokens']:>9} "
                f"{writes:>9} {r['output_tokens']:>9} {r['reasoning_tokens']:>9} {_usd(r['cost_usd']):>10} "
                f"{_usd(r['baseline_all_strong_usd']):>19} {_usd(r['baseline_online_usd']):>20} {_usd(r['savings_usd']):>10}"
            )
        total = self.rows[-1]
        if total["dedupe_requests"] or total["cache_requests"]:
            lines.append(
                f"served without a request: {total['dedupe_requests']} row(s) by dedupe "
                f"(${_usd(total['dedupe_avoided_usd'])} avoided), {total['cache_requests']} from the answer cache "
                f"(${_usd(total['cache_avoided_usd'])} avoided)"
            )
        lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())))
        lines.extend(f"  {q.render()}" for q in self.outcomes.values())
        return "\n".join(lines)


def _usd(amount: Decimal) -> str:
    # Printed to 1/100 of a cent so small runs show something; the table keeps the exact amounts.
    return str(amount.quantize(Decimal("0.0001")))


def queue_outcomes(responses: pa.Table) -> dict[str, QueueOutcomes]:
    """Rows per queue and status, and each queue's most frequent error types (ties by name)."""
    counts = responses.group_by(["queue", "status"]).aggregate([("prompt_id", "count")]).to_pylist()
    failed = responses.filter(pc.invert(pc.equal(responses["status"], "succeeded")))
    errors = failed.group_by(["queue", "error_type"]).aggregate([("prompt_id", "count")]).to_pylist()
    out = {}
    for queue in sorted({c["queue"] for c in counts}):
        by_status = {c["status"]: c["prompt_id_count"] for c in counts if c["queue"] == queue}
        ranked = sorted(
            ((e["error_type"] or "unknown", e["prompt_id_count"]) for e in errors if e["queue"] == queue),
            key=lambda item: (-item[1], item[0]),
        )
        out[queue] = QueueOutcomes(queue, *(by_status.get(s, 0) for s in ("succeeded", *FAILED_STATUSES)), tuple(ranked[:TOP_ERRORS]))
    return out


def _read_partition(config: RunConfig, name: str, run_date: date, columns: list[str]) -> pa.Table:
    fs, path = filesystem_for(f"{config.table_uri(name)}/run_date={run_date.isoformat()}")
    if fs.get_file_info(path).type.name != "Directory":
        raise FileNotFoundError(f"no {name} table for {config.run_id(run_date)} at {config.table_uri(name)}")
    fields = [arrow_schema(name).field(c) for c in columns]
    dataset = ds.dataset(path, filesystem=fs, format="parquet", schema=pa.schema(fields), exclude_invalid_files=True)
    return dataset.to_table(columns=[f.name for f in fields])


def check_one_outcome_per_prompt(routed_ids: pa.ChunkedArray, response_ids: pa.ChunkedArray, run_id: str) -> None:
    problems = []
    counts = pc.value_counts(response_ids)
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        problems.append(f"{len(duplicated)} prompt(s) with several outcomes, e.g. {duplicated[0]['values']}")
    missing = pc.filter(routed_ids, pc.invert(pc.is_in(routed_ids, value_set=response_ids)))
    if len(missing):
        problems.append(f"{len(missing)} routed prompt(s) without an outcome, e.g. {missing[0]}")
    unknown = pc.filter(response_ids, pc.invert(pc.is_in(response_ids, value_set=routed_ids)))
    if len(unknown):
        problems.append(f"{len(unknown)} outcome(s) for prompts that were not routed, e.g. {unknown[0]}")
    if problems:
        raise OutcomeInvariantError(f"{run_id}: " + "; ".join(problems))


_MONEY = ("cost_usd", "baseline_all_strong_usd", "baseline_online_usd", "savings_usd")
_SERVED = ("dedupe_requests", "cache_requests", "dedupe_avoided_usd", "cache_avoided_usd")


def _usage_groups(table: pa.Table | None) -> dict[tuple[str, str, str], tuple[int, TokenUsage]]:
    """(model, provider, queue) -> (rows, summed usage)."""
    if table is None or not table.num_rows:
        return {}
    grouped = table.group_by(["model", "provider", "queue"]).aggregate([("prompt_id", "count")] + [(c, "sum") for c in USAGE_COLUMNS])
    return {(g["model"], g["provider"], g["queue"]): (g["prompt_id_count"], TokenUsage(**{c: int(g[f"{c}_sum"] or 0) for c in USAGE_COLUMNS}))
            for g in grouped.to_pylist()}


def _served_usage(billed: pa.Table, cached: pa.Table | None) -> tuple[pa.Table, pa.Table | None, pa.Table | None]:
    """(rows billed on a request of their own, dedupe rows with their representative's usage, cache rows
    with their cached answer's usage). `cached`: prompt_id + usage of the run's cache hits (ledger)."""
    if "served_by" not in billed.column_names:
        return billed, None, None
    served_by = pc.fill_null(billed["served_by"], "batch")  # a table written before served_by existed
    own = billed.filter(pc.equal(served_by, "batch"))
    keys = ["model", "provider", "queue"]
    # A duplicate carries its representative's custom_id: the request that answered it.
    dupes = billed.filter(pc.equal(served_by, "dedupe")).select(["prompt_id", *keys, "custom_id"])
    reps = own.select(["provider", "custom_id", *USAGE_COLUMNS])
    dedupe = dupes.join(reps, keys=["provider", "custom_id"]) if dupes.num_rows else None
    hits = billed.filter(pc.equal(served_by, "cache")).select(["prompt_id", *keys])
    cache = hits.join(cached, keys="prompt_id") if hits.num_rows and cached is not None else None
    return own, dedupe, cache


def cost_rows(
    config: RunConfig, run_date: date, responses: pa.Table, superseded: pa.Table | None = None, cached: pa.Table | None = None
) -> list[dict]:
    """One row per (model, provider, queue) of succeeded requests, plus the `all` row (their sums).
    Every kind of token is priced at its own rate; money is exact (Decimal) at the table's scale.
    `superseded`: a cascade's replaced weak answers, billed in pass 1 (see the module docstring).
    `cached`: prompt_id + usage of the rows served from the answer cache (what their answers used)."""
    prices = price_table_for(config.pricing)
    discount = batch_discount(config.pricing)
    strong = prices.price(config.strong.model)
    billed = responses.filter(pc.is_in(responses["status"], value_set=pa.array(BILLED_STATUSES)))
    if "pass" in billed.column_names:  # a cascade's pass-2 answers on a line of their own
        second = pc.fill_null(pc.equal(billed["pass"], 2), False)
        billed = billed.set_column(billed.schema.get_field_index("queue"), "queue", pc.if_else(second, "escalated", billed["queue"]))
    billed, deduped, from_cache = _served_usage(billed, cached)
    final, paid_before = _usage_groups(billed), _usage_groups(superseded)
    by_dedupe, by_cache = _usage_groups(deduped), _usage_groups(from_cache)
    rows = []
    lines = final.keys() | paid_before.keys() | by_dedupe.keys() | by_cache.keys()
    for model, provider, queue in sorted(lines, key=lambda k: (k[2], k[0])):
        requests, usage = final.get((model, provider, queue), (0, TokenUsage()))
        extra_requests, extra = paid_before.get((model, provider, queue), (0, TokenUsage()))
        dedupe_requests, dedupe_usage = by_dedupe.get((model, provider, queue), (0, TokenUsage()))
        cache_requests, cache_usage = by_cache.get((model, provider, queue), (0, TokenUsage()))
        paid = TokenUsage(**{c: getattr(usage, c) + getattr(extra, c) for c in USAGE_COLUMNS})
        # The baselines answer every row once, at its own request's tokens: served rows at the ones they avoided.
        answered = TokenUsage(**{c: getattr(usage, c) + getattr(dedupe_usage, c) + getattr(cache_usage, c) for c in USAGE_COLUMNS})
        cost = stored_usd(prices.cost(model, paid, discount=discount))
        online = stored_usd(strong.baseline_cost(answered))
        rows.append(
            {
                "model": model, "provider": provider, "queue": queue, "requests": requests + extra_requests,
                **dataclasses.asdict(paid), "cost_usd": cost,
                "baseline_all_strong_usd": stored_usd(strong.baseline_cost(answered, discount)),
                "baseline_online_usd": online, "savings_usd": online - cost,
                "dedupe_requests": dedupe_requests, "cache_requests": cache_requests,
                "dedupe_avoided_usd": stored_usd(prices.cost(model, dedupe_usage, discount=discount)),
                "cache_avoided_usd": stored_usd(prices.cost(model, cache_usage, discount=discount)),
            }
        )
    total = {"model": "all", "provider": "all", "queue": "all"}
    for key in ("requests", *USAGE_COLUMNS, *_MONEY, *_SERVED):
        total[key] = sum((r[key] for r in rows), Decimal(0) if key.endswith("_usd") else 0)
    rows.append(total)
    for r in rows:
        r |= {"run_id": config.run_id(run_date), "price_table_version": prices.version, "run_date": run_date.isoformat()}
    return rows


def execute(config: RunConfig, run_date: date) -> ReportSummary:
    run_id = config.run_id(run_date)
    routed = _read_partition(config, "routed", run_date, ["prompt_id"])
    responses = _read_partition(
        config, "responses", run_date,
        ["prompt_id", "model", "provider", "queue", "status", "error_type", "pass", "served_by", "custom_id", *USAGE_COLUMNS],
    )  # fmt: skip
    check_one_outcome_per_prompt(routed["prompt_id"], responses["prompt_id"], run_id)
    # Paid but not final, on their own lines and never in the baselines: weak answers a pass 2 superseded,
    # unparsable answers asked again, the audit slice's answers and verdicts.
    ledger = Ledger.for_run(config, run_date)
    paid = [paid_retried_answers(ledger)]
    if config.escalates:
        paid.append(_read_partition(config, "superseded", run_date, ["prompt_id", "model", "provider", "queue", *USAGE_COLUMNS]))
    if config.audit is not None:
        paid.append(billed_usage(config, run_date))
    superseded = pa.concat_tables([t.cast(paid[0].schema) for t in paid if t is not None])
    served = read_served(ledger)
    cached = served.filter(pc.equal(served["served_by"], "cache")).select(["prompt_id", *USAGE_COLUMNS])
    rows = cost_rows(config, run_date, responses, superseded, cached)
    table = pa.Table.from_pylist(rows, schema=arrow_schema("cost_report"))
    check_cost_report(table, run_id)  # the output suite (great-expectations), before anything is written
    uri = f"{config.table_uri('cost_report')}/run_date={run_date.isoformat()}"
    fs, path = filesystem_for(uri)
    with atomic_output(fs, f"{path}/part-00000.parquet") as out:
        pq.write_table(table.drop_columns(["run_date"]), out)
    statuses = {s["values"]: s["counts"] for s in pc.value_counts(responses["status"]).to_pylist()}
    log.info("cost report for %s written to %s", run_id, uri)
    from routellm_batch.run_report import write_run_report  # pandas, jinja2: only when it runs

    write_run_report(config, run_date)
    return ReportSummary(run_id, uri, rows, statuses, queue_outcomes(responses))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    summary = execute(load_config(args.config), args.run_date)
    print(summary.render())
    return 0
