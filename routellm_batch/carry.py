"""The user's own columns (`input.carry`) through the run's tables, with their types.

The tables' declared columns live in schemas/tables.yaml; these are extra, config-named columns after
them: prompts and routed keep them as validate read them from the input (Spark types), and the responses
table gets them joined back by prompt_id from the routed table when it is written (pyarrow), so the
answers are usable without the input table. The prompts table also keeps `router_text` when
`router.text` names a column: the text the router scores.

Light module: pyarrow only.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pyarrow.compute as pc

from routellm_batch.config import RunConfig
from routellm_batch.ledger import filesystem_for

__all__ = ["ROUTER_TEXT", "CarriedColumns", "extra_columns"]

ROUTER_TEXT = "router_text"
_CARRIED_BY = ("prompts", "routed", "responses")


def extra_columns(config: RunConfig, table: str) -> tuple[str, ...]:
    """The config-named columns `table` holds after its declared ones."""
    carried = tuple(config.input.carry) if table in _CARRIED_BY else ()
    if table == "prompts" and config.router.text:
        return (*carried, ROUTER_TEXT)
    return carried


class CarriedColumns:
    """The routed table's carried columns by prompt_id, attached to responses rows (identity when none)."""

    def __init__(self, lookup: pa.Table | None) -> None:
        self._lookup = lookup
        self._ids = lookup.column("prompt_id").combine_chunks() if lookup is not None else None

    @classmethod
    def load(cls, config: RunConfig, run_date: date) -> CarriedColumns:
        """Read prompt_id + the carried columns of both queues of the run date's routed table."""
        names = list(config.input.carry)
        if not names:
            return cls(None)
        import pyarrow.dataset as ds

        uri = f"{config.table_uri('routed')}/run_date={run_date.isoformat()}"
        fs, root = filesystem_for(uri)
        # Spark's legacy INT96 timestamps would come back as nanoseconds, which Spark cannot read again.
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us"))
        dataset = ds.dataset(root, filesystem=fs, format=fmt, partitioning="hive", exclude_invalid_files=True)
        missing = [c for c in names if c not in dataset.schema.names]
        if missing:
            raise ValueError(
                f"the routed table of {config.run_id(run_date)} has no column(s) {missing} (input.carry): it was "
                "split before they were configured; run validate and split again"
            )
        return cls(dataset.to_table(columns=["prompt_id", *names]))

    def schema(self, base: pa.Schema) -> pa.Schema:
        """`base` (the responses file schema) followed by the carried columns."""
        if self._lookup is None:
            return base
        return pa.schema([*base, *(f for f in self._lookup.schema if f.name != "prompt_id")])

    def attach(self, table: pa.Table) -> pa.Table:
        """`table` (responses rows) with the carried values of each row's prompt_id appended."""
        if self._lookup is None:
            return table
        # take() rather than a hash join: Arrow's join cannot carry list or struct columns.
        at = pc.index_in(table.column("prompt_id"), value_set=self._ids)
        for field in self._lookup.schema:
            if field.name != "prompt_id":
                table = table.append_column(field, self._lookup.column(field.name).take(at))
        return table
