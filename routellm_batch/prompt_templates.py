"""Prompt templates over the input's columns: Jinja2 in its sandboxed mode, undefined names are errors.

Light module (jinja2 only): the config checks a template's syntax at load, validate renders it in Spark.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["compile_template", "template_columns", "template_error"]


@lru_cache(maxsize=1)
def _env() -> SandboxedEnvironment:
    # Sandboxed: a template from a config file cannot reach Python internals. Prompts are not HTML:
    # no autoescape. StrictUndefined: a name the row lacks is an error, never an empty string.
    return SandboxedEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)


def template_error(source: str) -> str | None:
    """None when `source` compiles, else one line saying where it does not."""
    try:
        _env().parse(source)
    except TemplateSyntaxError as exc:
        return f"template does not compile (line {exc.lineno}): {exc.message}"
    return None


def template_columns(source: str) -> set[str]:
    """The column names a template reads (its undeclared variables)."""
    return set(meta.find_undeclared_variables(_env().parse(source)))


def compile_template(source: str) -> Callable[[Mapping[str, Any]], str]:
    """A function rendering one row (column -> value) through the template."""
    template = _env().from_string(source)
    return lambda row: template.render(**row)
