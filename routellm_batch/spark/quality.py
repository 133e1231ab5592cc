"""Running great-expectations suites on Spark DataFrames (ephemeral context, no network, no progress bars)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuite
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class SuiteResult:
    suite: str
    success: bool
    failures: tuple[str, ...]  # one readable line per failed expectation
    statistics: dict[str, Any]

    def summary(self) -> str:
        met = f"{self.statistics.get('successful_expectations')}/{self.statistics.get('evaluated_expectations')}"
        head = f"great-expectations suite {self.suite}: {met} expectations met"
        return "\n".join([head, *(f"  not met: {f}" for f in self.failures)])


def run_suite(df: DataFrame, suite: ExpectationSuite) -> SuiteResult:
    """Validate `df` against `suite`; nothing raises on failed expectations: read `.success`."""
    # GX would otherwise phone home; this job never talks to anything but its own data.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    from routellm_batch._extras import needs_extra

    with needs_extra("data quality checks"):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX announces a temp folder on every ephemeral context at INFO; keep job logs to what matters.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_spark(name="routellm_batch").add_dataframe_asset(name=suite.name)
    batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}.validation", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        observed = r.result.get("unexpected_count", r.result.get("observed_value"))
        failures.append(f"{cfg.type} {kwargs} -> {observed}")
    return SuiteResult(suite.name, bool(result.success), tuple(failures), dict(result.statistics))
