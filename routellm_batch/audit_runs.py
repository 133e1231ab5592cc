"""The nightly audit slice below the stages: where its batches run, what they were billed, its summary line.

The `audit` stage has a hash-chosen share of each queue answered by the other model under a derived run
(`<job>-audit`, output root `<output_root>/audit_runs/answers`) and, with a judge, graded under a second
one (`<job>-audit-judge`, `<output_root>/audit_runs/judge`); it writes the `audit` and `audit_summary`
tables. The cost report bills the derived runs on an `audit` line and the run summary prints the estimate:
both read them through this module, so no stage imports another stage's internals.

Light module: pyarrow only.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from routellm_batch.batches.outcomes import BILLED_STATUSES
from routellm_batch.config import RunConfig
from routellm_batch.ledger import filesystem_for
from routellm_batch.providers.pricing import USAGE_COLUMNS
from routellm_batch.schemas import arrow_schema

__all__ = ["AUDIT_QUEUE", "answers_config", "billed_usage", "judge_config", "read_partition", "router_name", "summary_line"]

AUDIT_QUEUE = "audit"
"""The cost report's line for what the audit paid (it answers prompts a second time: never in the baselines)."""
_BILLED = pa.schema([arrow_schema("responses").field(c) for c in ("prompt_id", "model", "provider", "queue", *USAGE_COLUMNS)])


def _derived(config: RunConfig, suffix: str, folder: str, **update: Any) -> RunConfig:
    return config.model_copy(update={
        "job_name": f"{config.job_name[:28]}-{suffix}",
        "output_root": f"{config.output_root.rstrip('/')}/audit_runs/{folder}",
        "cascade": None,
        "audit": None,
        "input": config.input.model_copy(update={"carry": []}),  # its routed table holds no carried columns
        **update,
    })


def answers_config(config: RunConfig) -> RunConfig:
    """The derived run answering the audited prompts: its queue `strong` holds weak-queue prompts (the strong
    model answers them), its queue `weak` strong-queue prompts; its own job name, output root and ledger."""
    return _derived(config, "audit", "answers")


def judge_config(config: RunConfig) -> RunConfig | None:
    """The derived run of the judge's requests (both queues the judge model, plain text answers); None when
    the labels come from a reference column."""
    if config.learn is None or config.learn.judge is None:
        return None
    judge = config.learn.judge.model
    return _derived(config, "audit-judge", "judge", strong=judge, weak=judge, output=None)


def read_partition(config: RunConfig, table: str, run_date: date) -> pa.Table | None:
    """One run date's partition of a table under the config's output root; None when absent."""
    fs, path = filesystem_for(f"{config.table_uri(table)}/run_date={run_date.isoformat()}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()


def billed_usage(config: RunConfig, run_date: date) -> pa.Table | None:
    """Billed requests of the audit's derived runs (answers and judge) with their usage, on queue `audit`;
    None when the audit did not run."""
    parts = []
    for derived in (answers_config(config), judge_config(config)):
        got = read_partition(derived, "responses", run_date) if derived is not None else None
        if got is None or not got.num_rows:
            continue
        got = got.filter(pc.is_in(got["status"], value_set=pa.array(BILLED_STATUSES)))
        got = got.set_column(got.schema.get_field_index("queue"), "queue", pa.array([AUDIT_QUEUE] * got.num_rows, pa.string()))
        parts.append(got.select(_BILLED.names).cast(_BILLED))
    return pa.concat_tables(parts) if parts else None


def router_name(config: RunConfig) -> str:
    """The configured router as the summary names it (its family, and its checkpoint when not the shipped one)."""
    r = config.router
    return r.kind if r.checkpoint is None else f"{r.kind} ({r.checkpoint})"


def _interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    ci = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
    return f"{value:+.3f}{ci}"


def summary_line(rows: list[dict[str, Any]]) -> str:
    """The audit's estimate in one line, from the audit_summary rows of one run date."""
    by = {r["queue"]: r for r in rows}
    total = by["all"]
    line = (f"{total['labelled']} of {total['routed']} prompts audited ({total['label_source']}): routing vs all-strong "
            f"{_interval(total['routed_minus_all_strong'], total['ci_low'], total['ci_high'])}")
    if total["quality_routed"] is not None and total["quality_strong"] is not None:
        line += f" (est. quality {total['quality_routed']:.3f} vs {total['quality_strong']:.3f})"
    gaps = [f"{q} queue {_interval(by[q]['gap'], by[q]['gap_ci_low'], by[q]['gap_ci_high'])} (n={by[q]['labelled']})"
            for q in ("weak", "strong") if q in by and by[q]["routed"]]
    return line + ("; strong-weak gap: " + ", ".join(gaps) if gaps else "")
