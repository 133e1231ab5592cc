"""One table definition, three forms (Arrow, Spark, great-expectations) that must agree."""

from __future__ import annotations

import pyarrow as pa
import pytest

from routellm_batch.schemas import TABLE_NAMES, arrow_schema, gx_suite, spark_schema, table


def gx_facts(name: str) -> tuple[list[str], dict[str, str], set[str]]:
    columns, types, not_null = [], {}, set()
    for e in gx_suite(name).expectations:
        if e.expectation_type == "expect_table_columns_to_match_set":
            columns = list(e.column_set)
        elif e.expectation_type == "expect_column_values_to_be_of_type":
            types[e.column] = e.type_
        elif e.expectation_type == "expect_column_values_to_not_be_null":
            not_null.add(e.column)
    return columns, types, not_null


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_arrow_spark_and_gx_forms_agree(name):
    from pyspark.sql.pandas.types import from_arrow_schema

    arrow = arrow_schema(name)
    spark = spark_schema(name)
    # Same columns in the same order, same nullability.
    assert arrow.names == spark.fieldNames() == table(name).names
    assert [f.nullable for f in arrow] == [f.nullable for f in spark]
    # Same types: Spark's own Arrow conversion of our Arrow schema gives our Spark schema.
    converted = from_arrow_schema(arrow)
    for ours, theirs in zip(spark, converted, strict=True):
        assert ours.dataType.simpleString() == theirs.dataType.simpleString(), ours.name
    columns, types, not_null = gx_facts(name)
    assert set(columns) == set(arrow.names)
    assert types == {f.name: type(f.dataType).__name__ for f in spark}
    assert not_null == {f.name for f in arrow if not f.nullable}


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_keys_and_partitions_are_declared_columns(name):
    t = table(name)
    assert set(t.key) <= set(t.names) and set(t.partition_by) <= set(t.names)
    for c in t.key + t.partition_by:
        assert not t.column(c).nullable, f"{name}.{c} is a key or partition column and must be non-null"


def test_money_is_decimal_never_float():
    for f in arrow_schema("cost_report"):
        if f.name.endswith("_usd"):
            assert pa.types.is_decimal(f.type), f.name


def test_gx_suite_flags_a_frame_that_breaks_the_contract(spark):
    from routellm_batch.spark.quality import run_suite

    rows = [
        ("demo/2026-11-22", "p1", "hello", None, None, 16, "f.jsonl", "2026-11-22"),
        ("demo/2026-11-22", "p1", "again", None, None, 0, "f.jsonl", "2026-11-22"),
    ]
    result = run_suite(spark.createDataFrame(rows, spark_schema("prompts")), gx_suite("prompts"))
    assert not result.success
    failed = "\n".join(result.failures)
    assert "expect_compound_columns_to_be_unique" in failed and "expect_column_values_to_be_between" in failed
    assert run_suite(spark.createDataFrame(rows[:1], spark_schema("prompts")), gx_suite("prompts")).success


def test_unknown_table_is_named():
    with pytest.raises(KeyError, match="unknown table 'answers'"):
        table("answers")
