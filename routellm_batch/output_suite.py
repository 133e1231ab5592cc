"""The output suite: great-expectations checks of the responses table (after collect) and of the cost
report (after report, before it is written), on pandas so that neither stage needs Spark.

responses: one final outcome per routed prompt (row count = routed rows, prompt_id unique and set),
statuses in their set, token counts >= 0 and present on succeeded rows, cache counts within the input
and reasoning within the output. cost_report: one row per model, queues in their set, tokens and costs
>= 0, and every column of the `all` row equal to the sum of the other rows (compared exactly: the
amounts are Decimals, compared as their text).

A failing suite raises OutputSuiteFailed whose message names every failing expectation on one line.
Light until it runs: pandas and great_expectations are imported inside `check_*`; without them
(the core install) the suite is skipped with a warning, and the report's own invariant check remains.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds

from routellm_batch.ledger import filesystem_for
from routellm_batch.providers.pricing import USAGE_COLUMNS
from routellm_batch.schemas import arrow_schema, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["OutputSuiteFailed", "check_cost_report", "check_responses", "check_responses_partition"]

log = logging.getLogger(__name__)

_MONEY = ("cost_usd", "baseline_all_strong_usd", "baseline_online_usd", "savings_usd")


class OutputSuiteFailed(RuntimeError):
    """An output table broke its great-expectations suite; the message names the failing expectations."""


def _gx() -> Any | None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # the job talks to nothing but its own data
    try:
        import great_expectations as gx
    except ImportError:
        log.warning("great_expectations is not installed (extra 'spark'): output suite skipped")
        return None
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    return gx


def _run(name: str, frames: Sequence[tuple[str, pd.DataFrame, list[Any]]]) -> list[str]:
    """Validate each (asset, frame, expectations) in one ephemeral context; one text per failure."""
    gx = _gx()
    if gx is None:
        return []
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name=f"routellm_batch.{name}")
    failures = []
    for asset_name, frame, expectations in frames:
        batch = source.add_dataframe_asset(name=asset_name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=f"routellm_batch.output.{asset_name}", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{asset_name}.validation", data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        for r in result.results:
            if not r.success:
                cfg = r.expectation_config
                where = cfg.kwargs.get("column") or cfg.kwargs.get("column_list") or (
                    f"{cfg.kwargs['column_A']}/{cfg.kwargs['column_B']}" if "column_A" in cfg.kwargs else asset_name
                )
                seen = r.result.get("partial_unexpected_list") or r.result.get("observed_value")
                failures.append(f"{asset_name}: {cfg.type}({where}) got {json.dumps(seen, default=str)}"[:300])
    return failures


def _exact(value: Any) -> str:
    """An integer or Decimal as canonical text (0E-12 and 0 alike), so equal amounts compare equal."""
    return format((value if isinstance(value, Decimal) else Decimal(int(value))).normalize(), "f")


def _raise_if(name: str, run_id: str, failures: list[str]) -> None:
    if failures:
        raise OutputSuiteFailed(f"{run_id}: {name} output suite failed {len(failures)} expectation(s): " + "; ".join(failures))
    log.info("%s: %s output suite met", run_id, name)


def check_responses(responses: pa.Table, routed_rows: int, run_id: str) -> None:
    """The responses table of a run: one final outcome per routed prompt, sane usage."""
    if _gx() is None:
        return
    import great_expectations.expectations as gxe

    frame = responses.select(["prompt_id", "status", "served_by", *USAGE_COLUMNS]).to_pandas()
    # A row served by dedupe or the answer cache was not billed: its usage is null.
    succeeded = 'status=="succeeded" and served_by=="batch"'
    expectations: list[Any] = [
        gxe.ExpectTableRowCountToEqual(value=routed_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="prompt_id"),
        gxe.ExpectColumnValuesToBeUnique(column="prompt_id"),
        gxe.ExpectColumnValuesToBeInSet(column="status", value_set=list(table("responses").column("status").values or ())),
    ]
    for column in USAGE_COLUMNS:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0))
    for column in ("input_tokens", "output_tokens"):
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=column, row_condition=succeeded, condition_parser="pandas"))
    frame["cache_tokens"] = frame["cached_input_tokens"] + frame["cache_write_5m_tokens"] + frame["cache_write_1h_tokens"]
    expectations += [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="input_tokens", column_B="cache_tokens", or_equal=True, ignore_row_if="either_value_is_missing"
        ),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="output_tokens", column_B="reasoning_tokens", or_equal=True, ignore_row_if="either_value_is_missing"
        ),
    ]
    _raise_if("responses", run_id, _run("responses", [("responses", frame, expectations)]))


def check_responses_partition(uri: str, routed_rows: int, run_id: str) -> None:
    """`check_responses` on the responses partition at `uri` (as collect has just written it)."""
    fs, path = filesystem_for(uri)
    fields = [arrow_schema("responses").field(c) for c in ("prompt_id", "status", "served_by", *USAGE_COLUMNS)]
    data = ds.dataset(path, filesystem=fs, format="parquet", schema=pa.schema(fields)).to_table()
    check_responses(data, routed_rows, run_id)


def check_cost_report(rows: pa.Table, run_id: str) -> None:
    """The cost report of a run: one row per model, tokens and costs >= 0, the `all` row = sum of the rest."""
    if _gx() is None:
        return
    import great_expectations.expectations as gxe
    import pandas as pd

    frame = rows.select(["model", "queue", "requests", *USAGE_COLUMNS, *_MONEY]).to_pandas()
    expectations: list[Any] = [
        # A cascade bills the strong model again on its own `escalated` line (pass 2), the audit slice both models on `audit`.
        gxe.ExpectColumnValuesToBeUnique(column="model", row_condition='queue!="escalated" and queue!="audit"', condition_parser="pandas"),
        gxe.ExpectColumnValuesToBeInSet(column="queue", value_set=list(table("cost_report").column("queue").values or ())),
        gxe.ExpectColumnValuesToBeInSet(column="model", value_set=["all"], row_condition='queue=="all"', condition_parser="pandas"),
    ]
    for column in ("requests", *USAGE_COLUMNS, *_MONEY[:-1]):  # savings may be negative (a weak model dearer)
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0))
    # The `all` row against the sum of its parts, column by column, as exact text (Decimals, ints).
    parts = frame[frame["model"] != "all"]
    total = frame[frame["model"] == "all"]
    sums = pd.DataFrame(
        {
            "column": ["requests", *USAGE_COLUMNS, *_MONEY],
            "all_row": [_exact(total[c].iloc[0]) if len(total) == 1 else "missing" for c in ("requests", *USAGE_COLUMNS, *_MONEY)],
            "sum_of_parts": [_exact(sum(parts[c], start=Decimal(0))) for c in ("requests", *USAGE_COLUMNS, *_MONEY)],
        }
    )
    totals = [gxe.ExpectColumnPairValuesToBeEqual(column_A="all_row", column_B="sum_of_parts")]
    failures = _run("cost_report", [("cost_report", frame, expectations), ("cost_report_totals", sums, totals)])
    if any(f.startswith("cost_report_totals:") for f in failures):
        wrong = sums[sums["all_row"] != sums["sum_of_parts"]]
        failures = [f for f in failures if not f.startswith("cost_report_totals:")] + [
            f"cost_report_totals: expect_column_pair_values_to_be_equal(all row = sum of the other rows) differs in "
            + ", ".join(f"{r.column} ({r.all_row} != {r.sum_of_parts})" for r in wrong.itertuples())
        ]
    _raise_if("cost_report", run_id, failures)
