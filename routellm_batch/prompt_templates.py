"""Prompt templates over the input's columns: Jinja2 in its sandboxed mode, undefined names are errors.

Light module (jinja2 only): the config checks a template's syntax at load, validate renders it in Spark.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["compile_template", "one_line", "row_renderer", "template_columns", "template_error"]

Rendered = tuple[str | None, str | None, str | None]  # (prompt, system, error)


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
    """The column names a template reads (its undeclared variables, less Jinja's globals such as range)."""
    return set(meta.find_undeclared_variables(_env().parse(source))) - set(_env().globals)


def compile_template(source: str) -> Callable[[Mapping[str, Any]], str]:
    """A function rendering one row (column -> value) through the template."""
    template = _env().from_string(source)
    return lambda row: template.render(**row)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (its type and message; never a traceback)."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def row_renderer(user: str | None, system: str | None) -> Callable[[Mapping[str, Any]], Rendered]:
    """A function rendering one row through the user and system templates (None: not rendered here),
    returning (prompt, system, error): a failure in either is the row's one-line error, never raised."""
    parts = [(key, compile_template(source)) for key, source in (("user", user), ("system", system)) if source is not None]

    def render(row: Mapping[str, Any]) -> Rendered:
        out: dict[str, str | None] = {"user": None, "system": None}
        for key, template in parts:
            try:
                out[key] = template(row)
            except Exception as exc:  # a row's data broke its template: that row's outcome, not the run's
                return None, None, f"input.template.{key}: {one_line(exc)}"
        return out["user"], out["system"], None

    return render
