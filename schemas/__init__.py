"""The run's tables, defined once in tables.yaml, turned into Arrow, Spark and great-expectations forms.

Installed as `routellm_batch.schemas`. Light: pyarrow only; pyspark and great_expectations are imported
inside the functions that need them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import yaml

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite
    from pyspark.sql.types import StructType

__all__ = ["Column", "Table", "TABLE_NAMES", "table", "arrow_schema", "spark_schema", "gx_suite"]

_DECIMAL = re.compile(r"^decimal\((\d+),(\d+)\)$")
_SCALARS = {"string", "int32", "int64", "float32", "float64", "bool", "timestamp", "messages"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    values: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    partition_by: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")


@cache
def _tables() -> dict[str, Table]:
    raw = yaml.safe_load((Path(__file__).parent / "tables.yaml").read_text())
    tables = {}
    for name, spec in raw.items():
        columns = []
        for col, cs in spec["columns"].items():
            if cs["type"] not in _SCALARS and not _DECIMAL.match(cs["type"]):
                raise ValueError(f"tables.yaml: {name}.{col}: unknown type {cs['type']!r}")
            values = tuple(cs["values"]) if "values" in cs else None
            columns.append(Column(col, cs["type"], cs.get("nullable", True), values, cs.get("min"), cs.get("max")))
        t = Table(name, spec["description"], tuple(columns), tuple(spec.get("key", ())), tuple(spec.get("partition_by", ())))
        for c in t.key + t.partition_by:
            t.column(c)  # every key and partition column must exist
        tables[name] = t
    return tables


TABLE_NAMES = ("prompts", "quarantine", "routed", "responses", "cost_report", "ledger")


def table(name: str) -> Table:
    try:
        return _tables()[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(_tables())}") from None


# --- Arrow -----------------------------------------------------------------------------------------

_MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])


def _arrow_type(t: str) -> pa.DataType:
    if m := _DECIMAL.match(t):
        return pa.decimal128(int(m[1]), int(m[2]))
    return {
        "string": pa.string(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "messages": pa.list_(_MESSAGE),
    }[t]


def arrow_schema(name: str) -> pa.Schema:
    t = table(name)
    return pa.schema([pa.field(c.name, _arrow_type(c.type), nullable=c.nullable) for c in t.columns])


# --- Spark -----------------------------------------------------------------------------------------


def _spark_type(t: str):
    from pyspark.sql import types as T

    if m := _DECIMAL.match(t):
        return T.DecimalType(int(m[1]), int(m[2]))
    if t == "messages":
        message = T.StructType([T.StructField("role", T.StringType()), T.StructField("content", T.StringType())])
        return T.ArrayType(message)
    return {
        "string": T.StringType(),
        "int32": T.IntegerType(),
        "int64": T.LongType(),
        "float32": T.FloatType(),
        "float64": T.DoubleType(),
        "bool": T.BooleanType(),
        "timestamp": T.TimestampType(),
    }[t]


def spark_schema(name: str) -> StructType:
    from pyspark.sql import types as T

    t = table(name)
    return T.StructType([T.StructField(c.name, _spark_type(c.type), c.nullable) for c in t.columns])


# --- great-expectations ----------------------------------------------------------------------------


def gx_suite(name: str) -> ExpectationSuite:
    """The expectations every Spark DataFrame of this table must meet."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    t = table(name)
    expectations = [gxe.ExpectTableColumnsToMatchSet(column_set=t.names, exact_match=True)]
    for c in t.columns:
        expectations.append(gxe.ExpectColumnValuesToBeOfType(column=c.name, type_=type(_spark_type(c.type)).__name__))
        if not c.nullable:
            expectations.append(gxe.ExpectColumnValuesToNotBeNull(column=c.name))
        if c.values is not None:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(c.values)))
        if c.min is not None or c.max is not None:
            expectations.append(gxe.ExpectColumnValuesToBeBetween(column=c.name, min_value=c.min, max_value=c.max))
    if len(t.key) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=t.key[0]))
    elif t.key:
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(t.key)))
    # Built unattached to any context; run_suite adds it to an ephemeral one.
    return gx.ExpectationSuite(name=f"routellm_batch.{name}", expectations=expectations)
