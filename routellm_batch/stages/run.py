"""The run: every stage of one run date, in order, resuming where the last attempt stopped.

    routellm-batch run --run-date D [--config C] [--from-stage S]     (`nightly` is an alias)

Stages: validate, split (score + split in one Spark job), submit, wait, collect, report. When a
stage finishes it writes a marker, last, to `<output_root>/ledger/run_date=D/stages/<stage>.json`
holding its fingerprint: a hash of the settings that shape its output and of what it read (the
input files' listing for validate; the upstream stage's output for the others). The next `run`
skips a stage whose marker matches and whose output tables are still as it left them, so a run
that died anywhere is finished by the same command, and a finished run does nothing. A stage that
runs first drops its own marker and those after it. `--from-stage S` re-runs S and everything after.

With no --config it runs the embedded demo (local Spark, the shipped router, the sandbox provider
replaying recorded answers). The whole run holds the run date's lease (routellm_batch.lease).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow.fs as pafs

from routellm_batch.audit_runs import summary_line
from routellm_batch.config import RunConfig, load_config
from routellm_batch.labels import router_provenance_line
from routellm_batch.lease import run_lease
from routellm_batch.ledger import Ledger, atomic_output, filesystem_for, utcnow
from routellm_batch.progress import LedgerProgress, SparkProgress
from routellm_batch.run_report import quality_figures, read_known_outcomes, report_uri
from routellm_batch.stages import add_run_arguments

__all__ = ["STAGES", "RunResult", "StageOutcome", "add_arguments", "execute", "run", "sandboxed", "summary_table"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sandboxed(config: RunConfig) -> Iterator[RunConfig]:
    """When `sandbox.enabled`, serve the batch APIs on 127.0.0.1 and point both models at it."""
    if not config.sandbox.enabled:
        yield config
        return
    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer.from_settings(config.sandbox) as server:
        urls = {"openai": server.openai_base_url, "anthropic": server.anthropic_base_url}
        models = {
            role: spec.model_copy(update={"base_url": urls[spec.provider]})
            for role, spec in (("strong", config.strong), ("weak", config.weak))
        }
        update: dict[str, Any] = dict(models)
        if config.learn is not None and config.learn.judge is not None:  # the audit's judge answers here too
            judge = config.learn.judge.model
            models["judge"] = judge.model_copy(update={"base_url": urls[judge.provider]})
            update["learn"] = config.learn.model_copy(update={"judge": config.learn.judge.model_copy(update={"model": models["judge"]})})
        # The sandbox only checks that a key is sent; a real key in the environment never leaves this host.
        added = sorted({spec.api_key_env for spec in models.values() if spec.api_key_env not in os.environ})
        os.environ.update({name: "sandbox" for name in added})
        try:
            log.info("sandbox provider serving on %s", server.anthropic_base_url)
            yield config.model_copy(update=update)
        finally:
            for name in added:
                os.environ.pop(name, None)


# -- fingerprints --------------------------------------------------------------------------------------


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def listing_fingerprint(uri: str) -> str | None:
    """A hash of the files under `uri` (names, sizes, modification times); None when it cannot be listed.
    Hidden and `_`-prefixed files (Spark's _SUCCESS, temp files) are left out."""
    try:
        fs, path = filesystem_for(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return _hash("missing")
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(
            (i.path[len(path):], i.size, i.mtime_ns)
            for i in infos
            if i.type == pafs.FileType.File and not any(p.startswith(("_", ".")) for p in i.path[len(path):].split("/") if p)
        )
        return _hash(files)
    except Exception as exc:  # an unlistable store: the stage simply always runs
        log.debug("cannot fingerprint %s: %s", uri, exc)
        return None


def _models(config: RunConfig) -> dict[str, Any]:
    # Where the provider is reached and which key is used do not change what is asked.
    return {r: s.model_dump(mode="json", exclude={"base_url", "api_key_env"}) for r, s in (("strong", config.strong), ("weak", config.weak))}


def _audit_settings(config: RunConfig) -> Any:
    if config.audit is None or config.learn is None:
        return None
    # The slice and how it is labelled; where the judge is reached and with which key do not change it.
    labels = config.learn.model_dump(mode="json", include={"reference", "judge"}, exclude={"judge": {"model": {"base_url", "api_key_env"}}})
    return [config.audit.model_dump(mode="json"), labels]


# -- the stages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageOutcome:
    text: str
    complete: bool
    """False: the stage ended without finishing its work (batches still running, creates failing)."""


@dataclass
class _Run:
    """What the stages of one run share; the Spark session and the sandbox start only when needed."""

    config: RunConfig
    run_date: date
    _spark: Any = None
    _live: RunConfig | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def spark(self) -> Any:
        if self._spark is None:
            from routellm_batch.spark.session import get_spark

            self._spark = get_spark(self.config.spark, app_name=f"{self.config.job_name}:run")
        return self._spark

    def close(self) -> None:
        self._stack.close()

    @property
    def live(self) -> RunConfig:
        """The config with the providers reachable (the sandbox started when enabled)."""
        if self._live is None:
            self._live = self._stack.enter_context(sandboxed(self.config))
        return self._live


def _validate(r: _Run) -> StageOutcome:
    from routellm_batch.stages import validate

    with SparkProgress(r.spark, desc="validate (spark tasks)"):
        return StageOutcome(validate.execute(r.config, r.run_date, r.spark).render(), True)


def _split(r: _Run) -> StageOutcome:
    from routellm_batch.stages import split

    with SparkProgress(r.spark, desc="score+split (spark tasks)"):
        return StageOutcome(split.score_and_split(r.config, r.run_date, r.spark).render(), True)


def _submit(r: _Run) -> StageOutcome:
    from routellm_batch.stages import submit

    s = submit.execute(r.live, r.run_date)
    return StageOutcome(s.render(), not s.create_failures)


def _wait(r: _Run) -> StageOutcome:
    from routellm_batch.stages import wait

    s = wait.execute(r.live, r.run_date)
    return StageOutcome(s.render(), s.done)


def _collect(r: _Run) -> StageOutcome:
    from routellm_batch.stages import collect

    s = collect.execute(r.live, r.run_date)
    return StageOutcome(s.render(), s.done)


def _escalate(r: _Run) -> StageOutcome:
    from routellm_batch.stages import escalate

    s = escalate.execute(r.live, r.run_date)
    return StageOutcome(s.render(), s.done)


def _audit(r: _Run) -> StageOutcome:
    from routellm_batch.stages import audit

    s = audit.execute(r.live, r.run_date)
    return StageOutcome(s.render(), s.done)


def _report(r: _Run) -> StageOutcome:
    from routellm_batch.stages import report

    return StageOutcome(report.execute(r.config, r.run_date).render(), True)


@dataclass(frozen=True)
class Stage:
    name: str
    execute: Callable[[_Run], StageOutcome]
    settings: Callable[[RunConfig], Any]
    """The settings that shape this stage's output (part of its fingerprint)."""
    outputs: tuple[str, ...] = ()
    """Tables whose run-date partition it writes; checked unchanged before a skip."""
    batches: bool = False
    """It works on provider batches: progress is shown from the ledger while it runs."""
    applies: Callable[[RunConfig], bool] = lambda c: True
    """Whether this run config has the stage at all (escalate: only with a cascade policy or unparsable weak
    answers sent to the strong model)."""


STAGES: tuple[Stage, ...] = (
    Stage("validate", _validate, lambda c: [c.job_name, c.input.model_dump(mode="json"), c.quarantine.model_dump(mode="json")], ("prompts", "quarantine")),
    Stage("split", _split, lambda c: [c.router.model_dump(mode="json"), c.threshold.model_dump(mode="json"), c.pricing.model_dump(mode="json"), _models(c)], ("routed",)),
    Stage("submit", _submit, lambda c: [_models(c), c.batch.model_dump(mode="json", include={"max_requests", "max_bytes", "max_attempts"})], batches=True),
    Stage("wait", _wait, lambda c: [], batches=True),
    Stage("collect", _collect, lambda c: [c.batch.max_attempts], ("responses",), batches=True),
    Stage("escalate", _escalate, lambda c: [c.cascade.model_dump(mode="json") if c.cascade else None, _models(c)] + ([c.output.model_dump(mode="json")] if c.output else []), ("responses", "superseded"), batches=True,
          applies=lambda c: c.escalates),
    Stage("audit", _audit, lambda c: [_audit_settings(c), _models(c)], ("audit", "audit_summary"), batches=True, applies=lambda c: c.audit is not None),
    Stage("report", _report, lambda c: [c.pricing.model_dump(mode="json"), _models(c)], ("cost_report",)),
)  # fmt: skip
STAGE_NAMES = tuple(s.name for s in STAGES)


class _Markers:
    """The stage markers of one run date, next to its ledger."""

    def __init__(self, config: RunConfig, run_date: date) -> None:
        self.config, self.run_date = config, run_date
        self.fs, self.base = filesystem_for(f"{Ledger.for_run(config, run_date).uri}/stages")

    def read(self, stage: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(f"{self.base}/{stage}.json") as f:
                return json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def write(self, stage: str, body: dict[str, Any]) -> None:
        with atomic_output(self.fs, f"{self.base}/{stage}.json") as out:
            out.write(json.dumps(body, indent=1).encode())

    def drop(self, stages: list[str]) -> None:
        for stage in stages:
            with contextlib.suppress(FileNotFoundError, OSError):
                self.fs.delete_file(f"{self.base}/{stage}.json")

    def outputs(self, stage: Stage) -> str | None:
        """The fingerprint of what the stage wrote (None: unknown, never skip)."""
        if not stage.outputs:
            return _hash([])
        prints = [listing_fingerprint(f"{self.config.table_uri(t)}/run_date={self.run_date.isoformat()}") for t in stage.outputs]
        return None if None in prints else _hash(prints)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    ran: list[str]
    skipped: list[str]
    texts: list[str]
    complete: bool
    """Every stage finished; False when one stopped early (re-run the same command to go on)."""


def execute(config: RunConfig, run_date: date, *, from_stage: str | None = None) -> RunResult:
    """Run the stages in order, skipping the ones already complete and unchanged."""
    if config.quality.known_outcomes is not None:
        read_known_outcomes(config.quality.known_outcomes)  # a bad file fails before anything is paid for
    with run_lease(config, run_date, stage="run"), contextlib.closing(_Run(config, run_date)) as r:
        markers = _Markers(config, run_date)
        if from_stage is not None:
            markers.drop(list(STAGE_NAMES[STAGE_NAMES.index(from_stage) :]))
        upstream = _input_listing(config, run_date)
        ran: list[str] = []
        skipped: list[str] = []
        texts: list[str] = []
        for i, stage in enumerate(STAGES):
            if not stage.applies(config):
                continue
            # None anywhere (an input that cannot be listed): the stage always runs.
            fingerprint = _hash(stage.name, stage.settings(config), upstream) if upstream is not None else None
            marker = markers.read(stage.name)
            output = markers.outputs(stage)
            # A later stage may rewrite this one's table (escalate: the responses); that is still "as left".
            if fingerprint is not None and output is not None and marker and marker.get("fingerprint") == fingerprint and output in (marker.get("output"), marker.get("rewritten")):
                log.info("stage %s: complete and unchanged; skipped", stage.name)
                output = marker["output"]
                skipped.append(stage.name)
                texts.append(marker.get("summary", ""))
            else:
                markers.drop(list(STAGE_NAMES[i:]))
                log.info("stage %s: running", stage.name)
                with LedgerProgress(config, run_date) if stage.batches else contextlib.nullcontext():
                    outcome = stage.execute(r)
                ran.append(stage.name)
                texts.append(outcome.text)
                if not outcome.complete:
                    log.warning("stage %s did not finish; run the same command again to resume", stage.name)
                    return RunResult(config.run_id(run_date), ran, skipped, texts, False)
                output = markers.outputs(stage)
                markers.write(stage.name, {
                    "stage": stage.name, "fingerprint": fingerprint, "output": output,
                    "completed_at": utcnow().isoformat(), "summary": outcome.text,
                })  # fmt: skip
                for earlier in STAGES[:i]:
                    earlier_marker = markers.read(earlier.name)
                    if earlier_marker and set(earlier.outputs) & set(stage.outputs):
                        markers.write(earlier.name, {**earlier_marker, "rewritten": markers.outputs(earlier)})
            # What the next stage read: the tables this one wrote, or (ledger-only stages) this one's inputs.
            upstream = output if stage.outputs else fingerprint
        return RunResult(config.run_id(run_date), ran, skipped, texts, True)


def _input_listing(config: RunConfig, run_date: date) -> str | None:
    uri = config.input.uri_for(run_date)
    if any(c in uri for c in "*?[{"):
        return None  # a glob: which files it meant cannot be listed the way Spark reads it
    return listing_fingerprint(uri)


# -- the summary ---------------------------------------------------------------------------------------


def _partition(config: RunConfig, run_date: date, name: str, columns: list[str]) -> list[dict[str, Any]]:
    import pyarrow.dataset as ds

    fs, path = filesystem_for(f"{config.table_uri(name)}/run_date={run_date.isoformat()}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    return dataset.to_table(columns=[c for c in columns if c in dataset.schema.names]).to_pylist()


def summary_table(config: RunConfig, run_date: date) -> str:
    """One table a person reads at the end of a run, from the tables themselves."""
    from collections import Counter
    from decimal import Decimal

    quarantined = len(_partition(config, run_date, "quarantine", ["prompt_id"]))
    routed = Counter(r["queue"] for r in _partition(config, run_date, "routed", ["queue"]))
    statuses = Counter(r["status"] for r in _partition(config, run_date, "responses", ["status"]))
    cost = {r["model"]: r for r in _partition(config, run_date, "cost_report", ["model", "cost_usd", "baseline_all_strong_usd", "baseline_online_usd"])}
    rows = [
        ("rows in", f"{quarantined + sum(routed.values())}"),
        ("quarantined", f"{quarantined}"),
        ("routed strong / weak", f"{routed.get('strong', 0)} / {routed.get('weak', 0)}"),
        ("succeeded / errored / expired / canceled",
         " / ".join(str(statuses.get(k, 0)) for k in ("succeeded", "errored", "expired", "canceled"))),
    ]  # fmt: skip
    if config.output is not None:  # structured answers: rows whose answer did not parse or validate
        rows.append(("unparsable answers", f"{statuses.get('unparsable', 0)} (on_unparsable: {config.output.on_unparsable})"))
    total = cost.get("all")
    if total:
        spent = Decimal(total["cost_usd"])
        for label, key in (("all-strong batch", "baseline_all_strong_usd"), ("all-strong online", "baseline_online_usd")):
            base = Decimal(total[key])
            saved = f"{(base - spent) / base:.1%}" if base else "n/a"
            rows.append((f"cost vs {label} (USD)", f"{spent:.4f} vs {base:.4f}: {base - spent:.4f} saved ({saved})"))
    quality = quality_figures(config, run_date)
    rows.append(("quality vs all-strong", quality.vs_all_strong() if quality else "unknown (no known outcomes configured)"))
    audit = _partition(config, run_date, "audit_summary", ["queue", "routed", "labelled", "label_source", "quality_strong",
                       "quality_routed", "gap", "gap_ci_low", "gap_ci_high", "routed_minus_all_strong", "ci_low", "ci_high"])
    audited = any(r["queue"] == "all" and r["labelled"] for r in audit)
    if audit:
        rows.append(("audit estimate", summary_line(audit)))
    for name in ("prompts", "quarantine", "routed", "responses", "cost_report"):
        rows.append((f"table {name}", f"{config.table_uri(name)}/run_date={run_date.isoformat()}"))
    rows.append(("run report", f"{report_uri(config, run_date)}/index.html"))
    width = max(len(k) for k, _ in rows)
    lines = [f"run {config.run_id(run_date)}"] + [f"  {k:<{width}}  {v}" for k, v in rows]
    provenance = router_provenance_line(config, audited=audited)
    return "\n".join(lines + ([f"note: {provenance}"] if provenance else []))


# -- CLI -----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--from-stage", choices=STAGE_NAMES, default=None,
        help="re-run this stage and every stage after it, even when complete",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    result = execute(config, args.run_date, from_stage=args.from_stage)
    for text in result.texts:
        print(text, end="\n\n", flush=True)
    if result.skipped:
        print(f"already complete, skipped: {', '.join(result.skipped)}")
    if result.complete:
        print(summary_table(config, args.run_date))
    return 0 if result.complete else 3
