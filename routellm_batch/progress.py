"""What a person watching a run sees while batches are out: progress read from the run's ledger.

    with LedgerProgress(config, run_date):
        ...  # submit / wait / collect

A daemon thread reads the ledger (the records every stage writes at each transition; no API call
of its own) and shows, per queue, how many shards have a batch, how many batches have ended and
how many are collected, with the rows they hold. On a terminal: tqdm bars on stderr. Not on a
terminal, or in an Airflow task (whose log is a file): one log line per poll interval instead.

Light module: tqdm + the ledger.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import Counter
from datetime import date
from types import TracebackType
from typing import TYPE_CHECKING, Any

from routellm_batch.ledger import Ledger, ShardRecord, ShardState

if TYPE_CHECKING:
    from routellm_batch.config import RunConfig

__all__ = ["LedgerProgress", "SparkProgress", "interactive"]

log = logging.getLogger(__name__)

_STEPS = (
    ("with a batch", lambda r: r.batch_id is not None or r.state is ShardState.COLLECTED),
    ("batches ended", lambda r: r.state.batch_terminal or r.state is ShardState.COLLECTED),
    ("collected", lambda r: r.state is ShardState.COLLECTED),
)


def interactive() -> bool:
    """Bars only for a person at a terminal; Airflow sets AIRFLOW_CTX_* in its tasks' environment."""
    return sys.stderr.isatty() and not any(k.startswith("AIRFLOW_CTX_") for k in os.environ)


def _counts(records: list[ShardRecord]) -> dict[str, tuple[int, int, Counter[str], Counter[str]]]:
    """Per queue: shards, rows, and per step the shards and rows that reached it."""
    out: dict[str, tuple[int, int, Counter[str], Counter[str]]] = {}
    for r in records:
        shards, rows, done_shards, done_rows = out.get(r.queue, (0, 0, Counter(), Counter()))
        for name, reached in _STEPS:
            if reached(r):
                done_shards[name] += 1
                done_rows[name] += r.row_count
        out[r.queue] = (shards + 1, rows + r.row_count, done_shards, done_rows)
    return out


class LedgerProgress:
    def __init__(self, config: RunConfig, run_date: date, *, bars: bool | None = None, refresh_s: float = 0.5) -> None:
        self.ledger = Ledger.for_run(config, run_date)
        self.bars = interactive() if bars is None else bars
        self.refresh_s = refresh_s
        self.line_every_s = config.batch.poll_interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ledger-progress", daemon=True)
        self._tqdm: dict[str, Any] = {}
        self.lines: list[str] = []
        self._redirect: Any = None

    def __enter__(self) -> LedgerProgress:
        if self.bars:
            from tqdm.contrib.logging import logging_redirect_tqdm

            # Log lines print above the bars instead of through them.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.update()  # the final state, once
        for bar in self._tqdm.values():
            bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(exc_type, exc, tb)

    def _loop(self) -> None:
        waited = self.line_every_s
        while not self._stop.wait(self.refresh_s if self.bars else min(self.refresh_s, self.line_every_s)):
            waited += self.refresh_s
            if self.bars or waited >= self.line_every_s:
                waited = 0.0
                try:
                    self.update()
                except Exception as exc:  # a half-written run folder, a store hiccup: next time
                    log.debug("progress: %s", exc)

    def update(self) -> None:
        counts = _counts(self.ledger.records())
        if not counts:
            return
        if self.bars:
            self._draw(counts)
        else:
            line = "; ".join(
                f"{queue}: {shards} shard(s) / {rows} row(s), "
                + ", ".join(f"{done_shards[name]} {name}" for name, _ in _STEPS)
                for queue, (shards, rows, done_shards, _done_rows) in sorted(counts.items())
            )
            self.lines.append(line)
            log.info("batches %s: %s", self.ledger.run_id, line)

    def _draw(self, counts: dict[str, tuple[int, int, Counter[str], Counter[str]]]) -> None:
        from tqdm import tqdm

        for queue, (shards, rows, _done_shards, done_rows) in sorted(counts.items()):
            for name, _ in _STEPS:
                key = f"{queue} {name}"
                bar = self._tqdm.get(key)
                if bar is None:
                    bar = self._tqdm[key] = tqdm(total=rows, desc=f"{key:<22}", unit="row", file=sys.stderr, leave=True, dynamic_ncols=True)
                bar.total = rows
                bar.n = done_rows[name]
                bar.set_postfix_str(f"{shards} shard(s)", refresh=False)
                bar.refresh()


class SparkProgress:
    """A bar of the Spark tasks done while a block runs (scoring and splitting), from Spark's own
    status tracker; on a terminal only (Spark's console progress bar is off in our sessions)."""

    def __init__(self, spark: Any, *, bars: bool | None = None, refresh_s: float = 0.5, desc: str = "spark tasks") -> None:
        self.spark = spark
        self.bars = interactive() if bars is None else bars
        self.refresh_s = refresh_s
        self.desc = desc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spark-progress", daemon=True)
        self._done: dict[int, tuple[int, int]] = {}  # stage id -> (tasks done, tasks)
        self._bar: Any = None

    def __enter__(self) -> SparkProgress:
        if self.bars:
            from tqdm import tqdm

            self._bar = tqdm(total=0, desc=self.desc, unit="task", file=sys.stderr, dynamic_ncols=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            if exc_type is None:
                self._bar.n = self._bar.total  # the last stages may end between two looks
            self._bar.close()

    def _loop(self) -> None:
        tracker = self.spark.sparkContext.statusTracker()
        while not self._stop.wait(self.refresh_s):
            try:
                for stage_id in tracker.getActiveStageIds():
                    info = tracker.getStageInfo(stage_id)
                    if info is not None:
                        self._done[stage_id] = (info.numCompletedTasks, info.numTasks)
            except Exception as exc:  # the session stopping under us
                log.debug("spark progress: %s", exc)
                continue
            self._bar.total = sum(total for _, total in self._done.values())
            self._bar.n = sum(done for done, _ in self._done.values())
            self._bar.refresh()
