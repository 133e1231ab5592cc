"""Structured answers (config `output`): what the requests ask for, how answers are checked, their typed column.

- Requests: `openai_response_format` (OpenAI `response_format` json_schema; `strict` only when the schema
  meets OpenAI's strict rules, `openai_strict_ok`) and `anthropic_output_config` (Anthropic structured
  outputs, `output_config.format`, with the schema in the subset Anthropic accepts; the full schema is
  still checked here on collect).
- Collect: `check_result` turns a succeeded answer that is not JSON, breaks the schema or names a label
  outside the set into its own outcome, `unparsable` (text kept, a one-line reason), retryable as
  `on_unparsable` says.
- The responses table: `answer_field` / `with_answer` add the typed `answer` column, an Arrow type derived
  from the schema (object -> struct, string / integer / number / boolean, enum by its values' type, array
  -> list; anything else, e.g. anyOf, holds the value's canonical JSON text). A label set is an object with
  one enum field: `answer.label`.

Light module: jsonschema and pyarrow only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import pyarrow as pa

from routellm_batch.config import StructuredOutput
from routellm_batch.providers.base import RequestResult, ResultStatus
from routellm_batch.providers.errors import ErrorType

__all__ = [
    "anthropic_output_config",
    "answer_field",
    "answer_problem",
    "answer_type",
    "canonical_json",
    "check_result",
    "openai_response_format",
    "openai_strict_ok",
    "retry_unparsable",
    "with_answer",
    "with_answer_field",
]

_INT64 = (-(2**63), 2**63 - 1)
# Keywords OpenAI's strict mode refuses (its "supported schemas" list); a schema using any is sent non-strict.
_OPENAI_NOT_STRICT = frozenset({
    "allOf", "oneOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "patternProperties",
    "unevaluatedProperties", "propertyNames", "minProperties", "maxProperties", "unevaluatedItems", "contains",
    "minContains", "maxContains", "uniqueItems", "minLength", "maxLength",
})  # fmt: skip
_MAX_MESSAGE = 300


def canonical_json(value: Any) -> str:
    """One text per JSON value (sorted keys, no spaces): equal answers compare equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _schema_key(output: StructuredOutput) -> str:
    # Not canonical: the properties' order is the answer column's field order.
    return json.dumps(output.schema(), separators=(",", ":"))


# -- requests ----------------------------------------------------------------------------------------


def _subschemas(node: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = list((node.get("properties") or {}).values())
    for key in ("$defs", "definitions"):
        out += list((node.get(key) or {}).values())
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        out += list(node.get(key) or [])
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), Mapping):
            out.append(node[key])
    return out


def openai_strict_ok(schema: Mapping[str, Any]) -> bool:
    """Whether OpenAI accepts the schema with strict: true: every object closed (additionalProperties
    false) with every property required, and no keyword outside strict mode's subset."""

    def ok(node: Any) -> bool:
        if not isinstance(node, Mapping):
            return isinstance(node, bool)
        if _OPENAI_NOT_STRICT & set(node):
            return False
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types) or "properties" in node:
            if node.get("additionalProperties") is not False:
                return False
            if set(node.get("required") or ()) != set(node.get("properties") or {}):
                return False
        return all(ok(sub) for sub in _subschemas(node))

    return schema.get("type") == "object" and ok(schema)


def openai_response_format(output: StructuredOutput) -> dict[str, Any]:
    schema = output.schema()
    return {"type": "json_schema", "json_schema": {"name": output.name, "schema": schema, "strict": openai_strict_ok(schema)}}


def anthropic_output_config(output: StructuredOutput) -> dict[str, Any]:
    """Anthropic structured outputs (the installed SDK's `output_config.format`). The SDK's transform_schema
    closes every object and moves the constraints Anthropic does not enforce (minimum, minLength, ...)
    into descriptions; collect still checks them against the full schema."""
    from anthropic import transform_schema  # the SDK's own rules, imported only when a request needs them

    try:
        schema = transform_schema(_type_lists_as_any_of(output.schema()))
    except (AssertionError, ValueError, TypeError) as exc:
        raise ValueError(f"the JSON schema cannot be sent as Anthropic structured output: {exc}") from None
    return {"format": {"type": "json_schema", "schema": schema}}


def _type_lists_as_any_of(node: Any) -> Any:
    """`type: [string, "null"]` (common, valid JSON schema) as the anyOf the Anthropic SDK's transform reads."""
    if isinstance(node, list):
        return [_type_lists_as_any_of(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _type_lists_as_any_of(v) for k, v in node.items()}
    types = node.get("type")
    if isinstance(types, list):
        rest = {k: v for k, v in node.items() if k != "type"}
        return {"anyOf": [{"type": "null"} if t == "null" else {**rest, "type": t} for t in types]}
    return node


# -- collect -----------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _validator(schema_key: str) -> Any:
    from jsonschema.validators import validator_for

    schema = json.loads(schema_key)
    return validator_for(schema)(schema)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def answer_problem(text: str | None, output: StructuredOutput, finish_reason: str | None = None) -> str | None:
    """Why an answer is unusable (one line), or None when it parses and validates."""
    from jsonschema.exceptions import best_match

    cut = " (the answer was cut at max_tokens)" if finish_reason in ("length", "max_tokens") else ""
    try:
        value = json.loads(text or "")
    except ValueError as exc:
        msg = getattr(exc, "msg", str(exc))
        return _one_line(f"not JSON: {msg} (char {getattr(exc, 'pos', 0)}){cut}")
    error = best_match(_validator(_schema_key(output)).iter_errors(value))
    if error is None:
        try:
            _compiled(_schema_key(output))[1](value)
        except (ValueError, TypeError) as exc:
            return _one_line(f"schema violation at $: {exc}")
        return None
    if output.labels is not None and error.validator == "enum" and list(error.absolute_path) == ["label"]:
        return _one_line(f"label outside the set: {error.instance!r} is not one of {output.labels}")
    return _one_line(f"schema violation at {error.json_path}: {error.message}{cut}")


def retry_unparsable(output: StructuredOutput, queue: str) -> bool:
    """on_unparsable: retry asks the same model again; other_model retries a strong answer on the strong
    model (a weak one goes to the strong model in `escalate`'s pass 2); keep never retries."""
    return output.on_unparsable == "retry" or (output.on_unparsable == "other_model" and queue == "strong")


def check_result(result: RequestResult, output: StructuredOutput | None, *, queue: str) -> RequestResult:
    """A succeeded result whose answer is unusable becomes `unparsable` (its text kept); anything else as it is."""
    if output is None or result.status is not ResultStatus.SUCCEEDED:
        return result
    problem = answer_problem(result.text, output, result.finish_reason)
    if problem is None:
        return result
    return dataclasses.replace(
        result,
        status=ResultStatus.UNPARSABLE,
        error_type=ErrorType.UNPARSABLE,
        error_message=problem,
        retry=retry_unparsable(output, queue),
    )


# -- the typed column --------------------------------------------------------------------------------

_Convert = Callable[[Any], Any]


def _json_text(value: Any) -> str | None:
    return None if value is None else canonical_json(value)


def _int64(value: Any) -> int | None:
    if value is None:
        return None
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError(f"integer {number} is out of the 64-bit range")
    return number


def _scalar_of(values: list[Any]) -> tuple[pa.DataType, _Convert] | None:
    """The column type of an enum / const from its values (None when they mix kinds)."""
    if values and all(isinstance(v, str) for v in values):
        return pa.string(), lambda v: v
    if values and all(isinstance(v, bool) for v in values):
        return pa.bool_(), lambda v: v
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64(), _int64
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.float64(), lambda v: None if v is None else float(v)
    return None


def _node(schema: Any, root: Mapping[str, Any], seen: frozenset[str]) -> tuple[pa.DataType, _Convert]:
    if not isinstance(schema, Mapping):
        return pa.string(), _json_text
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        if ref in seen or not ref.startswith("#/"):
            return pa.string(), _json_text  # recursive or remote: kept as JSON text
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return _node(target, root, seen | {ref})
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    if kind is None and ("enum" in schema or "const" in schema):
        scalar = _scalar_of(list(schema["enum"]) if "enum" in schema else [schema["const"]])
        return scalar if scalar is not None else (pa.string(), _json_text)
    if kind == "object" and isinstance(schema.get("properties"), Mapping) and schema["properties"]:
        parts = [(name, *_node(sub, root, seen)) for name, sub in schema["properties"].items()]
        struct = pa.struct([pa.field(name, typ) for name, typ, _ in parts])

        def convert(value: Any) -> Any:
            if value is None:
                return None
            return {name: conv(value.get(name)) for name, _, conv in parts}

        return struct, convert
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        item_type, item_conv = _node(schema["items"], root, seen)
        return pa.list_(item_type), lambda v: None if v is None else [item_conv(x) for x in v]
    simple: dict[Any, tuple[pa.DataType, _Convert]] = {
        "string": (pa.string(), lambda v: v),
        "integer": (pa.int64(), _int64),
        "number": (pa.float64(), lambda v: None if v is None else float(v)),
        "boolean": (pa.bool_(), lambda v: v),
    }
    return simple.get(kind, (pa.string(), _json_text))


@lru_cache(maxsize=16)
def _compiled(schema_key: str) -> tuple[pa.DataType, _Convert]:
    schema = json.loads(schema_key)
    return _node(schema, schema, frozenset())


def answer_type(output: StructuredOutput) -> pa.DataType:
    """The Arrow type of the responses table's `answer` column for this output."""
    return _compiled(_schema_key(output))[0]


def answer_field(output: StructuredOutput) -> pa.Field:
    return pa.field("answer", answer_type(output))


def with_answer_field(schema: pa.Schema, output: StructuredOutput | None) -> pa.Schema:
    """A responses schema with the `answer` column when answers are structured."""
    return schema if output is None else schema.append(answer_field(output))


def with_answer(table: pa.Table, output: StructuredOutput | None) -> pa.Table:
    """`table` (responses rows) with the typed `answer` column: the parsed answer of each succeeded row,
    null for every other row. No `output`: the table as it is."""
    if output is None:
        return table
    typ, convert = _compiled(_schema_key(output))
    values = []
    for status, text in zip(table.column("status").to_pylist(), table.column("response_text").to_pylist(), strict=True):
        value = None
        if status == ResultStatus.SUCCEEDED.value and text is not None:
            try:
                value = convert(json.loads(text))
            except (ValueError, TypeError, AttributeError):
                value = None  # checked on collect; an answer from elsewhere that does not fit stays null
        values.append(value)
    return table.append_column(answer_field(output), pa.array(values, type=typ))
