"""Rendering `input.template` in Spark: the request's prompt and system text built from each row's columns.

A template that names no column is rendered once, on the driver (a constant system prompt: the usual
case). The others go through one Arrow UDF: only the named columns travel to Python (as one struct, with
their types: an int stays an int for `{% if n > 3 %}`), the templates are compiled once per task, and
each row comes back as (prompt, system, error). A row where a named column is null is not rendered: it
is quarantined (`null_template_value`); a row whose render fails keeps its one-line reason
(`template_error`). See routellm_batch.stages.validate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import pyarrow as pa

from routellm_batch.config import PromptTemplate
from routellm_batch.prompt_templates import row_renderer, template_columns

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["TEMPLATE_VALUES", "ConstantTemplateError", "apply_template", "template_keys"]

TEMPLATE_VALUES = "_template_values"  # the struct of the named columns, built by the reader
_RENDERED = pa.struct([("prompt", pa.string()), ("system", pa.string()), ("error", pa.string())])
_RENDERED_DDL = "struct<prompt: string, system: string, error: string>"


class ConstantTemplateError(ValueError):
    """A template that names no column fails to render: a config error, found before any work."""


def template_keys(template: PromptTemplate) -> dict[str, str]:
    """{column: the config key of the first template naming it} (user first, then system)."""
    keys: dict[str, str] = {}
    for key, source in (("input.template.user", template.user), ("input.template.system", template.system)):
        for column in sorted(template_columns(source)) if source is not None else ():
            keys.setdefault(column, key)
    return keys


def _render_batches(user: str | None, system: str | None):
    def render(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        render_row = row_renderer(user, system)  # compiled once per task
        for values in batches:
            rows = [
                render_row(row) if row is not None and None not in row.values() else (None, None, None)
                for row in values.to_pylist()
            ]
            yield pa.array([dict(zip(("prompt", "system", "error"), r, strict=True)) for r in rows], _RENDERED)

    # Real types, not the strings `from __future__ import annotations` makes: Spark reads the UDF kind from them.
    render.__annotations__ = {"batches": Iterator[pa.Array], "return": Iterator[pa.Array]}
    return render


def apply_template(df: DataFrame, template: PromptTemplate, keys: Mapping[str, str]) -> DataFrame:
    """`df` (with TEMPLATE_VALUES) plus `prompt`, `system`, `_null_template` (which named column is null)
    and `_template_error`; TEMPLATE_VALUES is dropped."""
    from pyspark.sql import functions as F

    values = F.col(TEMPLATE_VALUES)
    variable = {}
    constant: dict[str, str | None] = {"user": None, "system": None}
    for key, source in (("user", template.user), ("system", template.system)):
        if source is None:
            continue
        if template_columns(source):
            variable[key] = source
            continue
        prompt, system, error = row_renderer(*((source, None) if key == "user" else (None, source)))({})
        if error is not None:
            raise ConstantTemplateError(error)
        constant[key] = prompt if key == "user" else system
    null_checks: list[Column] = [
        F.when(values[c].isNull(), F.lit(f"column {c!r} is null; {key} names it")) for c, key in keys.items()
    ]
    df = df.withColumn("_null_template", F.coalesce(*null_checks, F.lit(None).cast("string")))
    if variable:
        udf = F.arrow_udf(_render_batches(variable.get("user"), variable.get("system")), _RENDERED_DDL)
        df = df.withColumn("_rendered", udf(values))
        rendered = F.col("_rendered")
        error = rendered["error"]
    else:
        rendered, error = None, F.lit(None).cast("string")

    def text(key: str, field: str) -> Column:
        if key in variable:
            return rendered[field]
        return F.lit(constant[key]).cast("string")

    return df.select(
        "*",
        text("user", "prompt").alias("prompt"),
        text("system", "system").alias("system"),
        error.alias("_template_error"),
    ).drop(TEMPLATE_VALUES, "_rendered")

