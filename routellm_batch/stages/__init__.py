"""The nightly stages, one module each, each with one entry point (`execute`) and a CLI pair."""

from __future__ import annotations

import argparse
from datetime import date

from routellm_batch.config import ConfigError, parse_run_date


def _run_date(value: str) -> date:
    try:
        return parse_run_date(value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {value!r}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The two arguments every stage takes: which config, which run date."""
    parser.add_argument("--config", default=None, help="run config YAML (default: the embedded demo config)")
    parser.add_argument("--run-date", required=True, type=_run_date, help="YYYY-MM-DD")
