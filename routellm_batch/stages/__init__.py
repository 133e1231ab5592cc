"""The nightly stages, one module each, each with one entry point (`execute`) and a CLI pair."""

from __future__ import annotations

import argparse

from routellm_batch.config import parse_run_date


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The two arguments every stage takes: which config, which run date."""
    parser.add_argument("--config", default=None, help="run config YAML (default: the embedded demo config)")
    parser.add_argument("--run-date", required=True, type=parse_run_date, help="YYYY-MM-DD")
