"""Stage 6: stream batch results into the responses table; resubmit retryable failures.

    routellm-batch collect --config C --run-date D [--no-wait] [--timeout SECONDS]

For every shard whose batch is terminal:
1. download each result file (OpenAI output AND errors; Anthropic results) as a stream into the
   ledger (`results/<shard>/<batch>-<source>.jsonl`, written whole; kept, never thrown away);
2. parse the stored copy line by line, join on custom_id through the shard's explicit map and
   write one outcome per request (`outcomes/<shard>.parquet`); a request with no usable line
   gets one too: expired / cancelled by the batch's end state, the provider's reason when the
   whole batch failed, else `missing_result` (retryable) naming the malformed lines' file;
3. mark the shard `collected`.

Then rows whose error is retryable (server errors, overload, expiry, cancellation, a batch
failed on token_limit_exceeded, malformed/missing results) are planned as attempt N+1 shards
and created, up to `batch.max_attempts`; invalid requests are final at once. By default collect
keeps polling until the retries are done, then replaces the run date's responses partition
with exactly one final row per routed prompt. Every step is idempotent: a crash anywhere and a
re-run give the same table, without downloading or paying again.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow.parquet as pq

from routellm_batch.answer_cache import add_run_answers
from routellm_batch.batches import (
    QUEUES,
    RunContext,
    open_run,
    plan_retries,
    poll_once,
    routed_prompt_ids,
    routed_row_count,
    submit_pending,
    superseded_plans,
)
from routellm_batch.config import RunConfig, load_config
from routellm_batch.output_suite import check_responses_partition
from routellm_batch.stages import add_run_arguments
from routellm_batch.ledger import Ledger, ShardRecord, ShardState
from routellm_batch.providers.base import BatchInfo, BatchProvider, BatchState, MalformedResultLine
from routellm_batch.providers.errors import ErrorType
from routellm_batch.providers.retry import call_with_retries
from routellm_batch.batches.outcomes import OutcomeWriter, error_row, result_row, write_responses
from routellm_batch.structured import check_result

__all__ = ["CollectSummary", "add_arguments", "collect_shard", "execute", "run"]

log = logging.getLogger(__name__)

_CUSTOM_ID_IN_TEXT = re.compile(rb'"custom_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')


def _download(
    ctx: RunContext, provider: BatchProvider, record: ShardRecord, info: BatchInfo, source: str, *, again: bool = False
) -> str:
    """Stream one result source into the ledger (whole or not at all); a stored copy is reused.
    `again`: a second, separate copy (when the first has unparseable lines)."""
    ledger = ctx.ledger
    rel = Ledger.result_rel(record.shard_id, f"{info.batch_id}-{source}" + ("-redownload" if again else ""))
    if ledger.exists(rel):
        return rel

    def once() -> None:
        with ledger.open_output(rel) as out, provider.open_result_stream(info, source) as chunks:
            for chunk in chunks:
                out.write(chunk)

    call_with_retries(once, policy=provider.retry, what=f"download {source} of batch {info.batch_id}")
    return rel


def _same_bytes(ledger: Ledger, a: str, b: str) -> bool:
    if ledger.fs.get_file_info(ledger.path(a)).size != ledger.fs.get_file_info(ledger.path(b)).size:
        return False
    with ledger.fs.open_input_stream(ledger.path(a)) as fa, ledger.fs.open_input_stream(ledger.path(b)) as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _peek_ids(ledger: Ledger, rels: list[str], provider: BatchProvider, limit: int = 5) -> list[str]:
    found = []
    for rel in rels:
        for _, line in ledger.iter_lines(rel):
            try:
                found.append(provider.parse_result_line(line).custom_id)
            except MalformedResultLine as exc:
                if exc.custom_id:
                    found.append(exc.custom_id)
            if len(found) >= limit:
                return found
    return found


def _missing(info: BatchInfo, malformed: int, rels: list[str], ledger: Ledger) -> tuple[ErrorType, str]:
    """The outcome of a request that has no usable result line, from how its batch ended."""
    if info.failure is not None:
        return info.failure.error_type, f"batch {info.batch_id} failed as a whole: {info.failure.message}"
    if info.state is BatchState.EXPIRED:
        return ErrorType.BATCH_EXPIRED, f"batch {info.batch_id} expired before this request ran"
    if info.state is BatchState.CANCELLED:
        return ErrorType.BATCH_CANCELLED, f"batch {info.batch_id} was cancelled before this request ran"
    where = ", ".join(ledger.uri_of(r) for r in rels) or "no result file"
    extra = f"; {malformed} result line(s) could not be parsed (kept in {where})" if malformed else ""
    return ErrorType.MISSING_RESULT, f"batch {info.batch_id} ended without a usable result line for this request{extra}"


@dataclass
class _ParseStats:
    succeeded: int = 0
    malformed: int = 0
    unknown: int = 0
    duplicates: int = 0
    missing: int = 0
    bad_files: set[str] = field(default_factory=set)


def _write_outcomes(
    ctx: RunContext,
    record: ShardRecord,
    info: BatchInfo,
    rels: list[str],
    cids: list[str],
    base: Callable[[str], dict[str, Any]],
) -> _ParseStats:
    """Parse the stored result files and write one outcome per request of the shard (atomically)."""
    ledger, provider = ctx.ledger, ctx.provider(record.queue)
    max_attempts = ctx.config.batch.max_attempts
    known = set(cids)
    sources = provider.result_sources(info)
    st = _ParseStats()
    seen: set[str] = set()
    # custom_id -> (may it have been billed?, why its line was unusable), used only if no good
    # line for it turns up later in the files.
    broken: dict[str, tuple[bool, str]] = {}
    anonymous_billed = 0  # unreadable lines with no custom_id, in a file of possibly billed answers
    with OutcomeWriter(ledger, Ledger.outcome_rel(record.shard_id)) as w:
        for source, rel in zip(sources, rels):
            for lineno, line in ledger.iter_lines(rel):
                try:
                    result = provider.parse_result_line(line)
                except MalformedResultLine as exc:
                    st.malformed += 1
                    st.bad_files.add(rel)
                    cid = exc.custom_id
                    if cid is None and (m := _CUSTOM_ID_IN_TEXT.search(line)):
                        cid = m.group(1).decode()
                    where = f"{ledger.uri_of(rel)} line {lineno}"
                    billed = provider.line_may_be_billed(source, line)
                    log.warning("shard %s: unparseable result line at %s: %s", record.shard_id, where, exc)
                    if cid in known:
                        broken.setdefault(cid, (billed, f"unparseable result line ({exc}) at {where}"))
                    elif billed:
                        anonymous_billed += 1
                    continue
                if result.custom_id not in known:
                    st.unknown += 1
                    continue
                if result.custom_id in seen:
                    st.duplicates += 1
                    continue
                seen.add(result.custom_id)
                result = check_result(result, ctx.config.output, queue=record.queue)  # unparsable answers
                st.succeeded += result.status.value == "succeeded"
                w.add(result_row(base(result.custom_id), result, max_attempts=max_attempts))
        for cid in cids:
            if cid in seen:
                continue
            st.missing += 1
            if cid in broken and info.failure is None:
                billed, why = broken[cid]
                if billed:
                    etype = ErrorType.MALFORMED_BILLED_RESULT
                    why += "; it may be a billed answer, so it is not resubmitted (that could pay twice)"
                else:
                    etype = ErrorType.MALFORMED_RESULT
                w.add(error_row(base(cid), etype, why, max_attempts=max_attempts))
            elif anonymous_billed and info.failure is None and info.state is BatchState.COMPLETED:
                why = (
                    f"batch {info.batch_id} has no readable result line for this request; {anonymous_billed} unreadable "
                    f"line(s) in its answers (kept in {', '.join(ledger.uri_of(r) for r in rels)}) may hold it, so it "
                    "is not resubmitted (that could pay twice)"
                )
                w.add(error_row(base(cid), ErrorType.MALFORMED_BILLED_RESULT, why, max_attempts=max_attempts))
            else:
                etype, msg = _missing(info, st.malformed, rels, ledger)
                w.add(error_row(base(cid), etype, msg, max_attempts=max_attempts))
    return st


def collect_shard(ctx: RunContext, record: ShardRecord) -> ShardRecord:
    """Turn one terminal shard's results into one stored outcome per request."""
    ledger, provider = ctx.ledger, ctx.provider(record.queue)
    max_attempts = ctx.config.batch.max_attempts
    mapping = pq.read_table(ledger.path(Ledger.map_rel(record.shard_id)), filesystem=ledger.fs, columns=["custom_id", "prompt_id"])
    cids: list[str] = mapping.column("custom_id").to_pylist()
    prompt_of = dict(zip(cids, mapping.column("prompt_id").to_pylist()))
    del mapping

    def base(cid: str) -> dict[str, Any]:
        return {
            "run_id": record.run_id, "prompt_id": prompt_of[cid], "queue": record.queue, "model": record.model,
            "provider": record.provider, "batch_id": record.batch_id, "custom_id": cid, "attempt": record.attempt,
        }  # fmt: skip

    out_rel = Ledger.outcome_rel(record.shard_id)
    if record.batch_id is None:
        # Refused at create: no batch, every row gets the provider's reason.
        etype = ErrorType(record.error_type or ErrorType.INVALID_REQUEST.value)
        with OutcomeWriter(ledger, out_rel) as w:
            for cid in cids:
                w.add(error_row(base(cid), etype, record.error or "the provider refused the batch", max_attempts=max_attempts))
        return ledger.advance(record, ShardState.COLLECTED, note=f"collected: {len(cids)} row(s) refused at create")

    info = provider.retrieve(record.batch_id)
    rels = [_download(ctx, provider, record, info, source) for source in provider.result_sources(info)]

    if not record.batch_verified:
        seen_ids = _peek_ids(ledger, rels, provider)
        if seen_ids and not any(cid in prompt_of for cid in seen_ids):
            log.warning("shard %s: adopted batch %s is not ours (custom_ids differ); re-planning the shard", record.shard_id, record.batch_id)
            return ledger.advance(
                record,
                ShardState.PLANNED,
                note=f"batch {record.batch_id} proved foreign at collect; shard to be created",
                foreign_batch_ids=record.foreign_batch_ids + (record.batch_id,),
                batch_id=None,
                batch_verified=True,
                provider_status=None,
            )

    stats = _write_outcomes(ctx, record, info, rels, cids, base)
    if stats.malformed:
        # A broken line may be a broken download: fetch each affected file once more (both copies
        # are kept) and use the fresh one when it differs.
        fresh = [_download(ctx, provider, record, info, src, again=True) if rel in stats.bad_files else rel
                 for src, rel in zip(provider.result_sources(info), rels)]  # fmt: skip
        if any(not _same_bytes(ledger, a, b) for a, b in zip(rels, fresh) if a != b):
            log.warning("shard %s: re-downloaded result files differ from the first copies; using them", record.shard_id)
            rels = fresh
            stats = _write_outcomes(ctx, record, info, rels, cids, base)
    unknown, duplicates, malformed, succeeded, missing = (
        stats.unknown, stats.duplicates, stats.malformed, stats.succeeded, stats.missing
    )
    if unknown or duplicates:
        log.warning("shard %s: %d result line(s) for unknown custom_ids, %d duplicate(s) ignored", record.shard_id, unknown, duplicates)
    note = (
        f"collected: {succeeded} succeeded, {len(cids) - succeeded - missing} with an error line, "
        f"{missing} without a result line, {malformed} unparseable line(s)"
    )
    return ledger.advance(record, ShardState.COLLECTED, note=note)


@dataclass(frozen=True)
class CollectSummary:
    run_id: str
    done: bool
    """True when the responses partition was written (every routed row has its final outcome)."""
    responses_uri: str | None
    rows: int
    by_status: dict[str, int]
    shards: int
    attempts: int
    """Highest attempt number used by any shard."""
    seconds: float

    def render(self) -> str:
        if self.done:
            return (
                f"collect {self.run_id}: {self.rows} response row(s) {self.by_status} -> {self.responses_uri} "
                f"({self.shards} shard(s), up to attempt {self.attempts})"
            )
        return f"collect {self.run_id}: not finished ({self.shards} shard(s)); run `wait` then `collect` again"


def execute(
    config: RunConfig,
    run_date: date,
    *,
    wait: bool = True,
    timeout: float | None = None,
    providers: Mapping[str, BatchProvider] | None = None,
    provider_options: Mapping[str, Any] | None = None,
) -> CollectSummary:
    ctx = open_run(config, run_date, providers=providers, provider_options=provider_options)
    ledger = ctx.ledger
    start = time.monotonic()
    try:
        for queue in QUEUES:
            if ledger.read_plan(queue, 1) is None:
                raise RuntimeError(f"{ctx.run_id}: queue {queue} was never planned; run `submit` first")
        while True:
            poll_once(ctx)
            for record in ledger.records():
                if record.state.batch_terminal:
                    collect_shard(ctx, record)
            plan_retries(ctx)
            submit_pending(ctx)
            records = ledger.records()
            open_records = [r for r in records if r.state is not ShardState.COLLECTED]
            if not open_records:
                break
            stuck = not any(r.state.in_flight or r.state.batch_terminal for r in open_records)
            out_of_time = timeout is not None and time.monotonic() - start >= timeout
            if not wait or stuck or out_of_time:
                log.warning("%s: %d shard(s) not collected yet; responses not written", ctx.run_id, len(open_records))
                return _summary(ctx, records, None, start)
            ctx.sleep(config.batch.poll_interval_seconds)
        # After a re-split, rows that left the input or their queue keep their outcomes in the ledger only.
        active = {q: routed_prompt_ids(config, run_date, q) for q in QUEUES} if superseded_plans(ledger) else None
        expected = routed_row_count(config, run_date)
        uri, _rows = write_responses(config, run_date, ledger, expected, active)
        check_responses_partition(uri, expected, ctx.run_id)  # the output suite (great-expectations)
        add_run_answers(config, run_date, uri)  # tonight's new answers, for the next nights (answer_cache)
        return _summary(ctx, ledger.records(), uri, start)
    finally:
        if providers is None:
            ctx.close()


def _summary(ctx: RunContext, records: list[ShardRecord], uri: str | None, start: float) -> CollectSummary:
    by_status: dict[str, int] = {}
    rows = 0
    if uri is not None:
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        from routellm_batch.ledger import filesystem_for

        fs, path = filesystem_for(uri)
        table = ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=["status"])
        rows = table.num_rows
        for item in pc.value_counts(table.column("status")).to_pylist():
            by_status[item["values"]] = item["counts"]
    return CollectSummary(
        run_id=ctx.run_id,
        done=uri is not None,
        responses_uri=uri,
        rows=rows,
        by_status=by_status,
        shards=len(records),
        attempts=max((r.attempt for r in records), default=0),
        seconds=time.monotonic() - start,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--no-wait", action="store_true", help="collect what is finished and exit (3 if retries are in flight)")
    parser.add_argument("--timeout", type=float, default=None, help="stop waiting for retries after this many seconds (exit 3)")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    s = execute(config, args.run_date, wait=not args.no_wait, timeout=args.timeout)
    print(s.render())
    return 0 if s.done else 3
