"""Per-request outcomes (stored per shard in the ledger) and the responses table built from them.

An outcome row is a responses-table row plus two flags: `retryable` (the error type says a
resubmission may succeed) and `final` (it is this prompt's answer: succeeded, not retryable, or
out of attempts). Every routed prompt gets exactly one final row: attempt N rows that are not
final are exactly the ones planned into attempt N+1 shards.

The responses partition is one Parquet file, `run_date=D/part-00000.parquet`, replaced whole
(temp + rename locally; a single PUT on object stores), so a reader or a crash sees the old
table or the new one, never both.

Light module: pyarrow only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from routellm_batch.carry import CarriedColumns
from routellm_batch.config import RunConfig
from routellm_batch.ledger import Ledger, atomic_output, filesystem_for
from routellm_batch.providers.base import RequestResult, ResultStatus
from routellm_batch.providers.errors import ErrorType
from routellm_batch.providers.pricing import USAGE_COLUMNS
from routellm_batch.schemas import arrow_schema
from routellm_batch.structured import with_answer, with_answer_field

__all__ = [
    "BILLED_STATUSES",
    "OUTCOME_SCHEMA",
    "RESPONSES_FILE_SCHEMA",
    "OutcomeWriter",
    "error_row",
    "iter_outcome_batches",
    "paid_retried_answers",
    "result_row",
    "write_responses",
]

log = logging.getLogger(__name__)

# The partition column lives in the directory name (as Spark writes it), not in the file; the cascade
# columns are written by `escalate` only.
RESPONSES_FILE_SCHEMA = pa.schema([f for f in arrow_schema("responses") if f.name not in ("run_date", "pass", "escalation")])
OUTCOME_SCHEMA = RESPONSES_FILE_SCHEMA.append(pa.field("retryable", pa.bool_(), nullable=False)).append(
    pa.field("final", pa.bool_(), nullable=False)
)
# The outcomes a provider bills: an unparsable answer was generated too.
BILLED_STATUSES = (ResultStatus.SUCCEEDED.value, ResultStatus.UNPARSABLE.value)
_STATUS_OF_ERROR = {ErrorType.BATCH_EXPIRED: ResultStatus.EXPIRED, ErrorType.BATCH_CANCELLED: ResultStatus.CANCELED}


def _final(status: ResultStatus, retryable: bool, attempt: int, max_attempts: int) -> bool:
    return status is ResultStatus.SUCCEEDED or not retryable or attempt >= max_attempts


def result_row(base: Mapping[str, Any], result: RequestResult, *, max_attempts: int) -> dict[str, Any]:
    """An outcome row from a parsed result line. `base`: run_id, prompt_id, queue, model,
    provider, batch_id, custom_id, attempt."""
    retryable = result.retryable
    message = result.error_message
    attempt = int(base["attempt"])
    if retryable and attempt >= max_attempts and message:
        message = f"{message} (gave up after {attempt} attempts)"
    return {
        **base,
        "status": result.status.value,
        "response_text": result.text,
        "finish_reason": result.finish_reason,
        **{column: getattr(result, column) for column in USAGE_COLUMNS},
        "error_type": result.error_type.value if result.error_type else None,
        "error_message": message,
        "served_by": "batch",
        "retryable": retryable,
        "final": _final(result.status, retryable, attempt, max_attempts),
    }


def error_row(base: Mapping[str, Any], error_type: ErrorType, message: str, *, max_attempts: int) -> dict[str, Any]:
    status = _STATUS_OF_ERROR.get(error_type, ResultStatus.ERRORED)
    return result_row(
        base,
        RequestResult(base["custom_id"], status, error_type=error_type, error_message=message),
        max_attempts=max_attempts,
    )


class OutcomeWriter:
    """Streams outcome rows into one Parquet object of the ledger; visible only after `commit`."""

    def __init__(self, ledger: Ledger, rel: str, batch_rows: int = 2048) -> None:
        self._cm = ledger.open_output(rel)
        self._out = self._cm.__enter__()
        self._writer = pq.ParquetWriter(self._out, OUTCOME_SCHEMA)
        self._rows: list[dict[str, Any]] = []
        self._batch_rows = batch_rows
        self.count = 0
        self.final = 0

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self.count += 1
        self.final += bool(row["final"])
        if len(self._rows) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=OUTCOME_SCHEMA))
            self._rows = []

    def commit(self) -> None:
        self._flush()
        self._writer.close()
        self._cm.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            err = RuntimeError("outcome write aborted")
            try:
                self._cm.__exit__(type(err), err, None)
            except RuntimeError:
                pass

    def __enter__(self) -> OutcomeWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def iter_outcome_batches(ledger: Ledger, rel: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    with ledger.fs.open_input_file(ledger.path(rel)) as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=8192, columns=columns)


def paid_retried_answers(ledger: Ledger) -> pa.Table:
    """Answers that were billed but are not final: unparsable answers asked again (on_unparsable: retry).
    The responses table keeps only each prompt's final outcome; the cost report bills these beside it."""
    columns = ["prompt_id", "model", "provider", "queue", *USAGE_COLUMNS]
    parts = []
    for name in ledger.list_files("outcomes"):
        if name.endswith(".parquet"):
            for batch in iter_outcome_batches(ledger, f"outcomes/{name}", ["final", "status", *columns]):
                keep = pc.and_(pc.invert(batch.column("final")), pc.is_in(batch.column("status"), value_set=pa.array(BILLED_STATUSES)))
                parts.append(pa.Table.from_batches([batch.filter(keep)]).select(columns))
    return pa.concat_tables(parts) if parts else pa.schema([OUTCOME_SCHEMA.field(c) for c in columns]).empty_table()


def write_responses(
    config: RunConfig, run_date: date, ledger: Ledger, expected_rows: int, active: Mapping[str, pa.Array] | None = None
) -> tuple[str, int]:
    """Replace the run date's responses partition with every final outcome row; returns (uri, rows).

    `active` (queue -> prompt ids routed there now): after a re-split, only those rows' outcomes are
    published; outcomes of rows that left the input or their queue stay in the ledger.
    Refuses to write when the number of final rows differs from the routed row count (a lost or
    doubled row is a bug to stop on, not to publish)."""
    from routellm_batch.batches.served import published_batches

    outcome_files = [f"outcomes/{name}" for name in ledger.list_files("outcomes") if name.endswith(".parquet")]
    dir_uri = f"{config.table_uri('responses')}/run_date={run_date.isoformat()}"
    fs, dir_path = filesystem_for(dir_uri)
    target = f"{dir_path}/part-00000.parquet"
    rows = 0
    with atomic_output(fs, target) as out:
        carried = CarriedColumns.load(config, run_date)  # the user's input.carry columns, by prompt_id
        writer = pq.ParquetWriter(out, carried.schema(with_answer_field(RESPONSES_FILE_SCHEMA, config.output)))
        for file_batches in published_batches(ledger, outcome_files):  # each file's, then dedupe's copies
            for batch in file_batches:
                keep = pc.equal(batch.column("final"), True)
                if active is not None:
                    routed_here = [
                        pc.and_(pc.equal(batch.column("queue"), q), pc.is_in(batch.column("prompt_id"), value_set=ids))
                        for q, ids in active.items()
                    ]
                    keep = pc.and_(keep, functools.reduce(pc.or_, routed_here))
                final = batch.filter(keep)
                if final.num_rows:
                    table = pa.Table.from_batches([final]).select(RESPONSES_FILE_SCHEMA.names).cast(RESPONSES_FILE_SCHEMA)
                    writer.write_table(carried.attach(with_answer(table, config.output)))  # typed answers, carried columns
                    rows += final.num_rows
        writer.close()
        if rows != expected_rows:
            raise RuntimeError(
                f"responses for {config.run_id(run_date)}: {rows} final outcomes for {expected_rows} routed rows; "
                "not publishing (see the ledger's outcomes/ folder)"
            )
    # One file per partition: anything else there (an older writer's parts, a killed writer's
    # temp file) would double rows or litter the table.
    for info in fs.get_file_info(_selector(dir_path)):
        if info.path != target and info.type.name == "File" and (
            not info.base_name.startswith(("_", ".")) or ".tmp-" in info.base_name
        ):
            fs.delete_file(info.path)
    return dir_uri, rows


def _selector(path: str) -> Any:
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, allow_not_found=True)
