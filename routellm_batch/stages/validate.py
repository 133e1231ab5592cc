"""Stage 1, validate: input table -> `prompts` (valid rows) + `quarantine` (every other row, with a reason).

Nothing is dropped: each input row lands in exactly one of the two tables. Row checks, first match wins:
malformed_record, missing_prompt_id, wrong_type, (with input.template) null_template_value and
template_error, missing_prompt, empty_prompt, prompt_too_long, and last duplicate_prompt_id among the
rows that passed every other check (the first by a deterministic order stays valid: source file path,
then position in the file for Parquet, then the record's text).

With `input.template`, the prompt and system texts are rendered in Spark from the columns the templates
name (routellm_batch.spark.templates); columns.prompt / columns.system are not read. Every column the
config names (template, input.carry, router.text) must exist in the input, checked before any work.
The carried columns keep their input types in the prompts table; JSON input gets them from Spark's JSON
schema inference (one extra pass over the input; a field whose records disagree reads as a string).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from routellm_batch.config import ConfigError, RunConfig, load_config
from routellm_batch.stages import add_run_arguments

if TYPE_CHECKING:
    import argparse

    from pyspark.sql import Column, DataFrame, SparkSession


_ROLES = ("system", "user", "assistant")
_INTEGRAL = ("TINYINT", "SMALLINT", "INT", "BIGINT")


class InputError(ValueError):
    """The input table cannot be used as configured (missing or mistyped columns): fails before any work."""


class QuarantineLimitExceeded(RuntimeError):
    """Too large a share of the input was quarantined; the run stops before routing anything."""


@dataclass(frozen=True)
class ValidateSummary:
    run_id: str
    input_rows: int
    valid_rows: int
    quarantined_rows: int
    reasons: dict[str, int] = field(default_factory=dict)
    input_suite: str = ""

    @property
    def quarantine_share(self) -> float:
        return self.quarantined_rows / self.input_rows if self.input_rows else 0.0

    def render(self) -> str:
        lines = [
            f"validate {self.run_id}: {self.input_rows} rows in, {self.valid_rows} valid, "
            f"{self.quarantined_rows} quarantined ({self.quarantine_share:.2%})"
        ]
        lines += [f"  {reason}: {n}" for reason, n in sorted(self.reasons.items())]
        if self.input_suite:
            lines.append(self.input_suite)
        return "\n".join(lines)


# --- reading: every format becomes one frame of typed candidate columns + the raw record ------------


def _read_json(spark: SparkSession, config: RunConfig, run_date: date) -> DataFrame:
    """JSON Lines read as text and parsed to VARIANT, so each row's real JSON types can be checked."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cols = config.input.columns
    types = None
    if _named_columns(config):
        types = _json_field_types(spark, config, run_date)
        _require_columns(list(types), config, optional_too=False)
    raw = spark.read.options(**config.input.options).text(config.input.uri_for(run_date))
    df = raw.select(
        F.col("value").alias("raw_record"),
        F.col("_metadata.file_path").alias("source_file"),
        F.lit(None).cast("long").alias("_position"),
        F.expr("try_parse_json(value)").alias("_v"),
    )
    malformed = F.col("_v").isNull() | (F.expr("schema_of_variant(_v)").substr(1, 6) != "OBJECT")

    def field_type(name: str) -> Column:
        return F.expr(f"schema_of_variant(variant_get(_v, '$.{_json_path(name)}'))")

    def as_text(name: str) -> Column:
        return F.expr(f"try_variant_get(_v, '$.{_json_path(name)}', 'string')")

    def present(name: str) -> Column:
        return F.expr(f"variant_get(_v, '$.{_json_path(name)}')").isNotNull() & (field_type(name) != "VOID")

    def typed(name: str) -> Column:
        ddl = "string" if isinstance(types[name], T.NullType) else types[name].simpleString()
        return F.expr(f"try_variant_get(_v, '$.{_json_path(name)}', '{ddl}')")

    out = df.select(
        "raw_record",
        "source_file",
        "_position",
        malformed.alias("_malformed"),
        F.when(present(cols.prompt_id), as_text(cols.prompt_id)).alias("prompt_id"),
        *_json_prompt_columns(config, field_type, present, as_text),
        *(_named_values(config, typed) if types is not None else []),
    )
    return _with_template(out, config)


def _json_field_types(spark: SparkSession, config: RunConfig, run_date: date) -> dict[str, Any]:
    """The types of JSON input fields, by Spark's own JSON schema inference: one pass over the input;
    a field whose records disagree is widened (to string at worst), so every record reads as one type."""
    inferred = spark.read.options(**config.input.options).json(config.input.uri_for(run_date)).schema
    return {f.name: f.dataType for f in inferred}


def _json_path(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ConfigError(f"input.columns: column name {name!r} must be letters, digits and '_' for JSON input")
    return name


def _json_prompt_columns(config: RunConfig, field_type, present, as_text) -> list[Column]:
    from pyspark.sql import functions as F

    cols = config.input.columns
    templated = config.input.template is not None
    out: list[Column] = []
    type_errors: list[Column] = []
    if templated:  # prompt and system are rendered (_with_template)
        out.append(F.lit(None).cast(_messages_type()).alias("messages"))
    elif cols.prompt:
        is_string = field_type(cols.prompt) == "STRING"
        out.append(F.when(is_string, as_text(cols.prompt)).alias("prompt"))
        out.append(F.lit(None).cast(_messages_type()).alias("messages"))
        type_errors.append(F.when(present(cols.prompt) & ~is_string, F.lit(f"{cols.prompt} is not a string")))
    else:
        parsed = F.expr(f"try_variant_get(_v, '$.{cols.messages}', '{_messages_ddl()}')")
        out.append(F.lit(None).cast("string").alias("prompt"))
        out.append(parsed.alias("messages"))
        type_errors.append(
            F.when(present(cols.messages) & parsed.isNull(), F.lit(f"{cols.messages} is not a list of {{role, content}}"))
        )
    if cols.system and not templated:
        is_string = field_type(cols.system) == "STRING"
        out.append(F.when(is_string, as_text(cols.system)).alias("system"))
        type_errors.append(F.when(present(cols.system) & ~is_string, F.lit(f"{cols.system} is not a string")))
    elif not templated:
        out.append(F.lit(None).cast("string").alias("system"))
    if cols.max_tokens:
        t = field_type(cols.max_tokens)
        value = F.expr(f"try_variant_get(_v, '$.{cols.max_tokens}', 'bigint')")
        ok = t.isin(*_INTEGRAL)
        out.append(F.when(ok, value).alias("max_tokens"))
        type_errors.append(
            F.when(present(cols.max_tokens) & ~ok, F.lit(f"{cols.max_tokens} is not an integer"))
        )
    else:
        out.append(F.lit(None).cast("bigint").alias("max_tokens"))
    out.append(F.coalesce(*type_errors, F.lit(None).cast("string")).alias("_type_error"))
    return out


def _read_typed(spark: SparkSession, config: RunConfig, run_date: date) -> DataFrame:
    """Parquet and CSV: columns already have a type; check it against what each mapped column needs."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    cols = config.input.columns
    reader = spark.read.options(**config.input.options)
    if config.input.format == "csv":
        reader = spark.read.options(**{"header": "true", "multiLine": "true", "escape": '"', **config.input.options})
    df = reader.format(config.input.format).load(config.input.uri_for(run_date))
    _require_columns(df.columns, config)
    schema = {f.name: f.dataType for f in df.schema}

    def must_be(column: str | None, expected: type, what: str) -> None:
        if column and not isinstance(schema[column], expected):
            raise InputError(
                f"input column {column!r} ({what}) has type {schema[column].simpleString()}; expected {expected.__name__}"
            )

    templated = config.input.template is not None
    if not templated:
        must_be(cols.prompt, T.StringType, "prompt")
        must_be(cols.system, T.StringType, "system")
    must_be(config.router.text, T.StringType, "router.text")
    user_columns = [F.col(f"`{c}`") for c in df.columns]
    position = F.col("_metadata.row_index") if config.input.format == "parquet" else F.lit(None).cast("long")
    type_errors: list[Column] = []
    if cols.max_tokens:
        source = F.col(f"`{cols.max_tokens}`")
        if isinstance(schema[cols.max_tokens], T.StringType):
            max_tokens = F.expr(f"try_cast(trim(`{cols.max_tokens}`) AS BIGINT)")
        elif isinstance(schema[cols.max_tokens], T.IntegralType):
            max_tokens = source.cast("bigint")
        else:
            raise InputError(
                f"input column {cols.max_tokens!r} (max_tokens) has type "
                f"{schema[cols.max_tokens].simpleString()}; expected an integer"
            )
        type_errors.append(F.when(source.isNotNull() & max_tokens.isNull(), F.lit(f"{cols.max_tokens} is not an integer")))
    else:
        max_tokens = F.lit(None).cast("bigint")
    texts: list[Column] = []  # with a template, prompt and system are rendered (_with_template)
    messages = F.lit(None).cast(_messages_type())
    if not templated:
        prompt = F.lit(None).cast("string") if cols.messages else F.col(f"`{cols.prompt}`")
        if cols.messages:
            messages = _messages_from_typed(df, cols.messages, schema[cols.messages], type_errors)
        system = F.col(f"`{cols.system}`") if cols.system else F.lit(None).cast("string")
        texts = [prompt.alias("prompt"), system.alias("system")]
    out = df.select(
        F.to_json(F.struct(*user_columns)).alias("raw_record"),
        F.col("_metadata.file_path").alias("source_file"),
        position.alias("_position"),
        F.lit(False).alias("_malformed"),
        F.col(f"`{cols.prompt_id}`").cast("string").alias("prompt_id"),
        *texts,
        messages.alias("messages"),
        max_tokens.alias("max_tokens"),
        F.coalesce(*type_errors, F.lit(None).cast("string")).alias("_type_error"),
        *_named_values(config, lambda c: F.col(f"`{c}`")),
    )
    return _with_template(out, config)


# --- templates, carried columns, the router's text ------------------------------------------------------


def _named_columns(config: RunConfig) -> bool:
    """Whether the config names input columns beyond the column mapping (template, carry, router.text)."""
    return bool(config.input.template or config.input.carry or config.router.text)


def _named_values(config: RunConfig, value: Callable[[str], Column]) -> list[Column]:
    """The carried columns (typed, their own names), `router_text`, and the struct of the template's columns."""
    from pyspark.sql import functions as F

    from routellm_batch.carry import ROUTER_TEXT
    from routellm_batch.spark.templates import TEMPLATE_VALUES, template_keys

    out = [value(c).alias(c) for c in config.input.carry]
    if config.router.text:
        out.append(value(config.router.text).cast("string").alias(ROUTER_TEXT))
    if config.input.template is not None and (keys := template_keys(config.input.template)):
        out.append(F.struct(*(value(c).alias(c) for c in keys)).alias(TEMPLATE_VALUES))
    return out


def _with_template(df: DataFrame, config: RunConfig) -> DataFrame:
    """Render the template into `prompt` and `system` (routellm_batch.spark.templates)."""
    from routellm_batch.spark.templates import ConstantTemplateError, apply_template, template_keys

    template = config.input.template
    if template is None:
        return df
    try:
        return apply_template(df, template, template_keys(template))
    except ConstantTemplateError as exc:
        raise InputError(str(exc)) from None


def _messages_from_typed(df: DataFrame, column: str, dtype, type_errors: list[Column]) -> Column:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    source = F.col(f"`{column}`")
    if isinstance(dtype, T.StringType):  # JSON text in a string column (CSV)
        parsed = F.from_json(source, _messages_type())
        type_errors.append(F.when(source.isNotNull() & parsed.isNull(), F.lit(f"{column} is not a list of {{role, content}}")))
        return parsed
    element = dtype.elementType if isinstance(dtype, T.ArrayType) else None
    if not isinstance(element, T.StructType) or not {"role", "content"} <= set(element.fieldNames()):
        raise InputError(
            f"input column {column!r} (messages) has type {dtype.simpleString()}; "
            "expected array<struct<role: string, content: string>>"
        )
    return F.transform(source, lambda m: F.struct(m["role"].cast("string").alias("role"), m["content"].cast("string").alias("content")))


def _messages_type():
    from pyspark.sql import types as T

    return T.ArrayType(T.StructType([T.StructField("role", T.StringType()), T.StructField("content", T.StringType())]))


def _messages_ddl() -> str:
    return "array<struct<role: string, content: string>>"


def _require_columns(present: list[str], config: RunConfig, optional_too: bool = True) -> None:
    from routellm_batch.spark.templates import template_keys

    cols = config.input.columns
    template = config.input.template
    if template is None:
        roles = ["prompt_id", "prompt", "messages", *(("system", "max_tokens") if optional_too else ())]
    else:  # prompt and system are rendered, not read
        roles = ["prompt_id", *(("max_tokens",) if optional_too else ())]
    wanted = [(getattr(cols, role), f"input.columns.{role}") for role in roles]
    wanted += list(template_keys(template).items()) if template else []
    wanted += [(c, "input.carry") for c in config.input.carry] + [(config.router.text, "router.text")]
    missing = [f"{column!r} ({key})" for column, key in wanted if column and column not in present]
    if missing:
        raise InputError(
            f"input table {config.input.uri} lacks required column(s) {', '.join(missing)}; "
            f"it has: {', '.join(present) or 'no columns'}"
        )


def _check_json_columns(spark: SparkSession, config: RunConfig, df: DataFrame) -> None:
    """JSON has no schema to check up front: require the id and prompt columns in at least one record.

    Optional columns (system, max_tokens) may be absent from every record of a JSON input.
    """
    from pyspark.sql import functions as F

    keys = df.where(~F.col("_malformed")).select(F.explode(F.expr("json_object_keys(raw_record)")).alias("k")).distinct()
    _require_columns([r.k for r in keys.collect()], config, optional_too=False)


# --- classifying --------------------------------------------------------------------------------------


def classify(df: DataFrame, config: RunConfig) -> DataFrame:
    """Add `reason` (null for valid rows) and `detail` to the candidate frame."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    limit = config.quarantine.max_prompt_chars
    text = F.coalesce(
        F.col("prompt"),
        F.aggregate(F.col("messages"), F.lit(""), lambda acc, m: F.concat(acc, F.coalesce(m["content"], F.lit("")))),
    )
    bad_message = F.exists(
        F.col("messages"),
        lambda m: m["role"].isNull() | ~m["role"].isin(*_ROLES) | m["content"].isNull(),
    )
    pid = F.col("prompt_id")
    rules = [
        (F.col("_malformed"), "malformed_record", F.lit("not a JSON object")),
        (pid.isNull() | (F.trim(pid) == ""), "missing_prompt_id", F.lit("prompt_id is missing or empty")),
        (F.col("_type_error").isNotNull(), "wrong_type", F.col("_type_error")),
        (bad_message, "wrong_type", F.lit(f"messages need a role in {list(_ROLES)} and string content")),
        (F.col("max_tokens") < 1, "wrong_type", F.lit("max_tokens must be a positive integer")),
        *_template_rules(df),
        (F.col("prompt").isNull() & F.col("messages").isNull(), "missing_prompt", F.lit("prompt is missing")),
        (F.trim(text) == "", "empty_prompt", F.lit("prompt is empty")),
        (F.length(text) > limit, "prompt_too_long", F.format_string(f"prompt has %d characters; limit {limit}", F.length(text))),
    ]
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    for condition, name, why in reversed(rules):
        reason = F.when(condition, F.lit(name)).otherwise(reason)
        detail = F.when(condition, why).otherwise(detail)
    df = df.withColumn("reason", reason).withColumn("detail", detail)

    # Among rows that passed every other check, the first of each prompt_id stays valid.
    order = Window.partitionBy("prompt_id").orderBy(
        F.col("source_file").asc_nulls_last(), F.col("_position").asc_nulls_last(), F.col("raw_record")
    )
    rank = F.when(F.col("reason").isNull(), F.row_number().over(order))
    first = F.first(F.when(F.col("reason").isNull(), F.col("source_file")), ignorenulls=True).over(
        order.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    )
    return (
        df.withColumn("_rank", rank)
        .withColumn("_first_file", first)
        .withColumn("detail", F.when(F.col("_rank") > 1, F.format_string("duplicate of a row kept from %s", F.col("_first_file"))).otherwise(F.col("detail")))
        .withColumn("reason", F.when(F.col("_rank") > 1, F.lit("duplicate_prompt_id")).otherwise(F.col("reason")))
        .drop("_rank", "_first_file")
    )


def _template_rules(df: DataFrame) -> list[tuple[Column, str, Column]]:
    """With a template: a named column null in the row, then a render that failed (routellm_batch.spark.templates)."""
    from pyspark.sql import functions as F

    if "_template_error" not in df.columns:
        return []
    return [
        (F.col("_null_template").isNotNull(), "null_template_value", F.col("_null_template")),
        (F.col("_template_error").isNotNull(), "template_error", F.col("_template_error")),
    ]


def input_suite(config: RunConfig):
    """What a clean input looks like; its result is the input's data-quality report for the run."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    text = "prompt" if config.input.columns.prompt else "messages"
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="prompt_id"),
        gxe.ExpectColumnValuesToBeUnique(column="prompt_id"),
        gxe.ExpectColumnValuesToNotBeNull(column=text),
    ]
    if text == "prompt":
        expectations.append(
            gxe.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1, max_value=config.quarantine.max_prompt_chars)
        )
    return gx.ExpectationSuite(name=f"routellm_batch.input.{config.job_name}", expectations=expectations)


# --- the stage ----------------------------------------------------------------------------------------


def execute(config: RunConfig, run_date: date, spark: SparkSession | None = None) -> ValidateSummary:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from routellm_batch.schemas import gx_suite
    from routellm_batch.spark.quality import run_suite
    from routellm_batch.spark.session import get_spark
    from routellm_batch.spark.tables import delete_partition, write_run_table

    spark = spark or get_spark(config.spark, app_name=f"{config.job_name}:validate")
    run_id = config.run_id(run_date)
    if config.input.format == "json":
        candidates = _read_json(spark, config, run_date)
        if not _named_columns(config):  # else the columns were checked against the inferred schema
            _check_json_columns(spark, config, candidates)
    else:
        candidates = _read_typed(spark, config, run_date)

    classified = (
        classify(candidates, config)
        .withColumn("run_id", F.lit(run_id))
        .withColumn("run_date", F.lit(run_date.isoformat()))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        # On the kept rows: a template is rendered once, not again for the input's report.
        input_report = run_suite(classified.select("prompt_id", "prompt", "messages"), input_suite(config))
        counts = {r["reason"]: r["count"] for r in classified.groupBy("reason").count().collect()}
        valid = counts.pop(None, 0)
        summary = ValidateSummary(run_id, valid + sum(counts.values()), valid, sum(counts.values()), counts)
        write_run_table(classified.where(F.col("reason").isNotNull()), config, "quarantine")
        if summary.quarantine_share > config.quarantine.max_share:
            delete_partition(spark, config, "prompts", run_date)  # no stale valid rows for later stages
            raise QuarantineLimitExceeded(
                f"{summary.render()}\n{summary.quarantine_share:.2%} of rows quarantined, over the limit "
                f"quarantine.max_share={config.quarantine.max_share:.2%}; see {config.table_uri('quarantine')}"
            )
        valid_rows = classified.where(F.col("reason").isNull()).withColumn("max_tokens", F.col("max_tokens").cast("int"))
        uri = write_run_table(valid_rows, config, "prompts")
        # The valid rows must meet the prompts table's contract; a failure here is a bug, not bad input.
        written = spark.read.parquet(f"{uri}/run_date={run_date.isoformat()}").withColumn("run_date", F.lit(run_date.isoformat()))
        result = run_suite(written.select(*_table_columns("prompts")), gx_suite("prompts"))
        if not result.success:
            raise RuntimeError(f"validated prompts broke their table contract:\n{result.summary()}")
        summary = ValidateSummary(**{**asdict(summary), "input_suite": input_report.summary()})
    finally:
        classified.unpersist()
    return summary


def _table_columns(name: str) -> list[str]:
    from routellm_batch.schemas import table

    return table(name).names


# --- CLI ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    run_date = args.run_date
    try:
        summary = execute(config, run_date)
    except (InputError, QuarantineLimitExceeded) as exc:
        print(f"validate failed: {exc}")
        return 1
    print(summary.render())
    print(json.dumps({"prompts": config.table_uri("prompts"), "quarantine": config.table_uri("quarantine")}))
    return 0
