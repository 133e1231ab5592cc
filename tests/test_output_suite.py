"""The output suite (real great-expectations on pandas) after collect and after report: a clean run
passes, and each broken promise fails with a message naming the failing expectations on one line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routellm_batch.output_suite import OutputSuiteFailed, check_cost_report, check_responses, check_responses_partition
from routellm_batch.schemas import arrow_schema

RUN_ID = "job/2026-03-01"
USAGE = {"input_tokens": 100, "output_tokens": 20, "cached_input_tokens": 64, "cache_write_5m_tokens": 0,
         "cache_write_1h_tokens": 0, "reasoning_tokens": 12}  # fmt: skip


def response(prompt_id: str, status: str = "succeeded", **usage: Any) -> dict[str, Any]:
    row = dict.fromkeys(arrow_schema("responses").names)
    row |= {"run_id": RUN_ID, "prompt_id": prompt_id, "queue": "weak", "model": "gpt-5-mini", "provider": "openai",
            "custom_id": f"c-{prompt_id}", "status": status, "attempt": 1, "served_by": "batch", "run_date": "2026-03-01"}  # fmt: skip
    if status == "succeeded":
        row |= USAGE | usage
    return row


def responses(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=arrow_schema("responses"))


def good_responses() -> pa.Table:
    return responses(response("p1"), response("p2", input_tokens=7, cached_input_tokens=0, reasoning_tokens=0),
                     response("p3", "errored"), response("p4", "expired"))  # fmt: skip


def failure_of(check, *args) -> str:
    with pytest.raises(OutputSuiteFailed) as exc:
        check(*args)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(RUN_ID)
    return message


def test_a_clean_responses_table_meets_the_suite():
    check_responses(good_responses(), 4, RUN_ID)


@pytest.mark.parametrize(
    ("rows", "routed", "expectation"),
    [
        ([response("p1"), response("p1")], 2, "expect_column_values_to_be_unique(prompt_id)"),
        ([response("p1"), response("p2")], 3, "expect_table_row_count_to_equal(responses) got 2"),
        ([response("p1"), response("p2", "lost")], 2, 'expect_column_values_to_be_in_set(status) got ["lost"]'),
        ([response("p1", output_tokens=-5, reasoning_tokens=0)], 1, "expect_column_values_to_be_between(output_tokens)"),
        ([response("p1", input_tokens=None)], 1, "expect_column_values_to_not_be_null(input_tokens)"),
        ([response("p1", cached_input_tokens=101)], 1, "expect_column_pair_values_a_to_be_greater_than_b(input_tokens/cache_tokens)"),
        ([response("p1", reasoning_tokens=21)], 1, "expect_column_pair_values_a_to_be_greater_than_b(output_tokens/reasoning_tokens)"),
    ],
    ids=["duplicate", "missing", "unknown-status", "negative-tokens", "succeeded-without-usage", "cache-over-input", "reasoning-over-output"],
)
def test_each_broken_responses_promise_is_named(rows, routed, expectation):
    assert expectation in failure_of(check_responses, responses(*rows), routed, RUN_ID)


def test_several_failures_are_all_named_in_one_line():
    message = failure_of(check_responses, responses(response("p1"), response("p1", "lost")), 3, RUN_ID)
    assert "failed 3 expectation(s)" in message
    for name in ("expect_table_row_count_to_equal", "expect_column_values_to_be_unique", "expect_column_values_to_be_in_set"):
        assert name in message


def test_the_suite_reads_the_partition_collect_wrote(tmp_path: Path):
    part = tmp_path / "responses" / "run_date=2026-03-01"
    part.mkdir(parents=True)
    pq.write_table(good_responses().drop_columns(["run_date"]), part / "part-00000.parquet")
    check_responses_partition(str(part), 4, RUN_ID)
    assert "expect_table_row_count_to_equal" in failure_of(check_responses_partition, str(part), 5, RUN_ID)


def cost_row(model: str, queue: str, requests: int, tokens: int, cost: str, **extra: Any) -> dict[str, Any]:
    row = {"run_id": RUN_ID, "model": model, "provider": "openai", "queue": queue, "requests": requests,
           "input_tokens": tokens, "output_tokens": tokens // 2, "cached_input_tokens": 0, "cache_write_5m_tokens": 0,
           "cache_write_1h_tokens": 0, "reasoning_tokens": 0, "cost_usd": Decimal(cost),
           "baseline_all_strong_usd": Decimal(cost) * 2, "baseline_online_usd": Decimal(cost) * 4,
           "savings_usd": Decimal(cost) * 3, "price_table_version": "v", "run_date": "2026-03-01"}  # fmt: skip
    return row | extra


def cost_report(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=arrow_schema("cost_report"))


def test_a_cost_report_whose_all_row_sums_its_parts_meets_the_suite():
    parts = [cost_row("gpt-4.1", "strong", 3, 8527, "0.0042635"), cost_row("gpt-5-mini", "weak", 7, 7919, "0.000000000001")]
    total = cost_row("all", "all", 10, 8527 + 7919, "0.004263500001")
    total["output_tokens"] = 8527 // 2 + 7919 // 2
    check_cost_report(cost_report(*parts, total), RUN_ID)


def test_an_all_row_off_by_a_picodollar_is_named_with_the_column():
    parts = [cost_row("gpt-4.1", "strong", 3, 10, "0.5"), cost_row("gpt-5-mini", "weak", 7, 10, "0.25")]
    total = cost_row("all", "all", 10, 20, "0.750000000001", output_tokens=10)
    total |= {"baseline_all_strong_usd": Decimal("1.5"), "baseline_online_usd": Decimal("3"), "savings_usd": Decimal("2.25")}
    message = failure_of(check_cost_report, cost_report(*parts, total), RUN_ID)
    assert "all row = sum of the other rows" in message and "cost_usd (0.750000000001 != 0.75)" in message
    assert "savings_usd" not in message  # only the column that differs


def test_negative_costs_and_a_second_row_per_model_are_named():
    rows = [cost_row("gpt-4.1", "strong", 1, 10, "-0.5"), cost_row("gpt-4.1", "weak", 1, 10, "0.5"), cost_row("all", "all", 2, 20, "0", output_tokens=10)]
    rows[-1] |= {"baseline_all_strong_usd": Decimal(0), "baseline_online_usd": Decimal(0), "savings_usd": Decimal(0)}
    message = failure_of(check_cost_report, cost_report(*rows), RUN_ID)
    assert "expect_column_values_to_be_unique(model)" in message
    assert "expect_column_values_to_be_between(cost_usd)" in message
