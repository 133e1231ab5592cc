"""The cascade's pass 2: escalate the most doubtful weak answers to the strong model.

    routellm-batch escalate --config C --run-date D        (runs between collect and report when `cascade` is set)

1. Read tonight's weak-queue succeeded responses and their prompts; score each answer's doubt with the
   configured scorer (routellm_batch.escalation); the logprob scorer reads the token log-probabilities
   from the raw result files collect kept in the ledger.
2. Pick the most doubtful within the limit (a share of the weak queue, or pass 2's estimated USD at batch
   prices), ties broken by a hash of prompt_id, and write the plan (`<output_root>/pass2/plan/run_date=D`)
   BEFORE any batch: a re-run reads the plan and never scores or picks again.
3. Answer the escalated prompts with the strong model through submit / wait / collect as a derived run
   (`<job>-pass2`, output root `<output_root>/pass2`): its ledger resumes, so nothing is paid twice.
   With `output.on_unparsable: other_model`, every unparsable weak answer is escalated too (outside the
   cascade's limit), and the stage runs even without a cascade.
4. Publish: the responses partition keeps one final outcome per routed prompt (an escalated row's is the
   strong answer, `pass` 2, `escalation` 'escalated'; a failed pass-2 request keeps the weak answer,
   `escalation` 'pass2_failed'); the weak answers replaced go to the `superseded` table with their usage.
   Publishing starts from the plan's copy of the pass-1 rows, so it gives the same tables every time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from routellm_batch.carry import CarriedColumns
from routellm_batch.config import CascadeSettings, ConfigError, RunConfig, load_config
from routellm_batch.labels import question_text
from routellm_batch.ledger import Ledger, atomic_output, filesystem_for
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages import add_run_arguments
from routellm_batch.structured import with_answer_field

__all__ = ["EscalateSummary", "add_arguments", "execute", "pass2_config", "plan_uri", "run"]

log = logging.getLogger(__name__)

PART = "part-00000.parquet"


def _file_schema(table: str) -> pa.Schema:
    # The partition column lives in the directory name, not in the file.
    return pa.schema([f for f in arrow_schema(table) if f.name != "run_date"])


def _responses_schema(config: RunConfig) -> pa.Schema:
    return with_answer_field(_file_schema("responses"), config.output)  # typed answers (config `output`)


def _unparsable_to_strong(config: RunConfig) -> bool:
    return config.output is not None and config.output.on_unparsable == "other_model"


def pass2_config(config: RunConfig) -> RunConfig:
    """The derived run answering the escalated prompts: its own job name, output root and ledger."""
    return config.model_copy(update={
        "job_name": f"{config.job_name[:34]}-pass2",
        "output_root": f"{config.output_root.rstrip('/')}/pass2",
        "weak": config.strong,
        "cascade": None,
        "input": config.input.model_copy(update={"carry": []}),  # _publish joins them back to the final rows
    })


def plan_uri(config: RunConfig, run_date: date) -> str:
    return f"{config.output_root.rstrip('/')}/pass2/plan/run_date={run_date.isoformat()}/{PART}"


def _partition(config: RunConfig, table: str, run_date: date, sub: str = "") -> pa.Table | None:
    fs, path = filesystem_for(f"{config.table_uri(table)}/run_date={run_date.isoformat()}{sub}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return ds.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True).to_table()


def _write(uri: str, table: pa.Table) -> None:
    fs, path = filesystem_for(uri)
    with atomic_output(fs, path) as out:
        pq.write_table(table, out)


def _read(uri: str) -> pa.Table | None:
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


def _tie(prompt_id: str) -> str:
    return hashlib.sha256(prompt_id.encode()).hexdigest()


def _weak_logprobs(config: RunConfig, run_date: date) -> dict[str, Any]:
    """custom_id -> the answer's token log-probabilities, from the raw result files collect kept."""
    from routellm_batch.escalation import logprobs_from_body

    ledger = Ledger.for_run(config, run_date)
    sel = pafs.FileSelector(ledger.path("results"), recursive=True, allow_not_found=True)
    found: dict[str, Any] = {}
    for info in ledger.fs.get_file_info(sel):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".jsonl") or info.base_name.startswith("."):
            continue
        for _n, line in ledger.iter_lines(info.path[len(ledger.base) + 1:]):
            try:
                body = json.loads(line)
            except ValueError:
                continue  # collect made an error row of it already
            logprobs = logprobs_from_body(body)
            if logprobs is not None and isinstance(body.get("custom_id"), str):
                found[body["custom_id"]] = logprobs
    return found


def _scorer(config: RunConfig) -> Any:
    from routellm_batch.escalation import load_scorer, resolve

    cascade = config.cascade
    assert cascade is not None
    if cascade.scorer_dir:
        scorer = load_scorer(cascade.scorer_dir)
        if scorer.kind != cascade.scorer:
            raise ConfigError(f"cascade.scorer_dir {cascade.scorer_dir} holds a {scorer.kind!r} scorer, not {cascade.scorer!r}")
        return scorer
    return resolve(cascade.scorer)(**cascade.scorer_settings)


def _plan(config: RunConfig, run_date: date) -> pa.Table:
    """Score tonight's weak answers and pick the ones to escalate: every weak pass-1 row, with its doubt,
    rank and whether it escalates (its full responses row kept for publishing)."""
    from routellm_batch.escalation import WeakAnswer
    from routellm_batch.providers.pricing import batch_discount, price_table_for

    cascade = config.cascade
    responses = _partition(config, "responses", run_date)
    routed = _partition(config, "routed", run_date, "/queue=weak")
    if responses is None:
        raise FileNotFoundError(f"escalate: no responses for {config.run_id(run_date)}; run collect first")
    weak = responses.filter(pc.equal(responses["queue"], "weak")).to_pylist()
    prompts = {r["prompt_id"]: r for r in (routed.to_pylist() if routed is not None else [])}
    eligible = ({"succeeded"} if cascade is not None else set()) | ({"unparsable"} if _unparsable_to_strong(config) else set())
    rows = [r for r in weak if r["status"] in eligible and r["prompt_id"] in prompts]
    # An unparsable answer (output.on_unparsable: other_model) is escalated, outside the cascade's limit;
    # the scorer ranks the succeeded ones.
    doubts = [1.0] * len(rows)
    scored = [i for i, r in enumerate(rows) if r["status"] == "succeeded"]
    if scored:
        scorer = _scorer(config)
        logprobs = _weak_logprobs(config, run_date) if "logprobs" in scorer.needs else {}
        items = [WeakAnswer(prompt=question_text(prompts[rows[i]["prompt_id"]]), answer=rows[i]["response_text"] or "",
                            logprobs=logprobs.get(rows[i]["custom_id"]) if "logprobs" in scorer.needs else None) for i in scored]
        for i, doubt in zip(scored, scorer.score(items), strict=True):
            doubts[i] = float(doubt)

    order = sorted(range(len(rows)), key=lambda i: (-doubts[i], _tie(rows[i]["prompt_id"])))
    picked = {i for i, r in enumerate(rows) if r["status"] == "unparsable"}
    if cascade is not None:
        picked |= _within_limit(config, cascade, [i for i in order if i not in picked], rows, prompts, doubts, len(weak))
    rank = {i: k + 1 for k, i in enumerate(order)}
    plan = pa.Table.from_pylist(rows, schema=_responses_schema(config))
    return (plan.append_column("doubt", pa.array(doubts, pa.float64()))
                .append_column("rank", pa.array([rank[i] for i in range(len(rows))], pa.int64()))
                .append_column("escalate", pa.array([i in picked for i in range(len(rows))], pa.bool_())))


def _within_limit(config: RunConfig, cascade: CascadeSettings, order: list[int], rows: list[dict[str, Any]],
                  prompts: dict[str, Any], doubts: list[float], weak_rows: int) -> set[int]:
    """The most doubtful of `order` within the cascade's limit (a share of the weak queue, or pass 2's USD)."""
    from routellm_batch.providers.pricing import batch_discount, price_table_for

    prices, discount = price_table_for(config.pricing), batch_discount(config.pricing)
    cap = int(cascade.share * weak_rows) if cascade.share is not None else len(order)
    budget = Decimal(str(cascade.budget_usd)) if cascade.budget_usd is not None else None
    spent, picked = Decimal(0), set()
    for i in order:
        if len(picked) >= cap or doubts[i] <= cascade.min_doubt:
            break
        if budget is not None:
            routed_row = prompts[rows[i]["prompt_id"]]
            out_tokens = routed_row.get("max_tokens") or config.strong.max_tokens
            est = prices.cost(config.strong.model, int(routed_row["est_input_tokens"]), int(out_tokens), discount=discount)
            if spent + est > budget:
                break
            spent += est
        picked.add(i)
    return picked


def _routed_pass2(config: RunConfig, p2: RunConfig, run_date: date, ids: list[str]) -> None:
    """The derived run's routed table: the escalated prompts, queue strong (written once)."""
    uri = f"{p2.table_uri('routed')}/run_date={run_date.isoformat()}/queue=strong/{PART}"
    if _read(uri) is not None:
        return
    routed = _partition(config, "routed", run_date, "/queue=weak")
    assert routed is not None
    schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
    rows = routed.filter(pc.is_in(routed["prompt_id"], value_set=pa.array(ids, pa.string())))
    rows = rows.select(schema.names).cast(schema).to_pylist()
    for r in rows:
        r |= {"run_id": p2.run_id(run_date), "model": p2.strong.model, "provider": p2.strong.provider, "router": "cascade"}
    fs, path = filesystem_for(f"{p2.table_uri('routed')}/run_date={run_date.isoformat()}/queue=weak")
    fs.create_dir(path, recursive=True)  # an empty weak queue: submit plans both queues
    _write(uri, pa.Table.from_pylist(rows, schema=schema))


def _publish(config: RunConfig, run_date: date, plan: pa.Table, pass2: pa.Table | None) -> tuple[int, int, int]:
    """Write the final responses and the superseded answers; returns (escalated, failed, superseded)."""
    schema = _responses_schema(config)
    responses = _partition(config, "responses", run_date)
    assert responses is not None
    keep = responses.filter(pc.invert(pc.is_in(responses["prompt_id"], value_set=plan["prompt_id"])))
    strong = {r["prompt_id"]: r for r in (pass2.to_pylist() if pass2 is not None else [])}
    final, superseded = [], []
    failed = 0
    for r in plan.to_pylist():
        weak = {k: r.get(k) for k in schema.names} | {"pass": 1, "escalation": None}
        if not r["escalate"]:
            final.append(weak)
            continue
        got = strong.get(r["prompt_id"])
        if got is not None and got["status"] == "succeeded":
            final.append({k: got.get(k) for k in schema.names} | {
                "run_id": config.run_id(run_date), "queue": "weak", "pass": 2, "escalation": "escalated"})
            superseded.append({k: r.get(k) for k in _file_schema("superseded").names})
        else:
            failed += 1
            final.append(weak | {"escalation": "pass2_failed"})
    rest = keep.select([c for c in schema.names if c in keep.column_names]).to_pylist()
    rest = [{k: row.get(k) for k in schema.names} | {"pass": 1, "escalation": None} for row in rest]
    date_dir = f"run_date={run_date.isoformat()}"
    _write(f"{config.table_uri('superseded')}/{date_dir}/{PART}", pa.Table.from_pylist(superseded, schema=_file_schema("superseded")))
    table = CarriedColumns.load(config, run_date).attach(pa.Table.from_pylist(rest + final, schema=schema))
    _write(f"{config.table_uri('responses')}/{date_dir}/{PART}", table)
    return len(superseded) + failed, failed, len(superseded)


@dataclass(frozen=True)
class EscalateSummary:
    run_id: str
    scored: int
    escalated: int
    pass2_failed: int
    superseded: int
    plan_uri: str
    done: bool
    texts: tuple[str, ...] = ()

    def render(self) -> str:
        head = "\n".join(self.texts)
        if not self.done:
            return f"{head}\nescalate {self.run_id}: pass 2 not finished; run the same command again".strip()
        return (f"{head}\nescalate {self.run_id}: {self.scored} weak answer(s) scored, {self.escalated} escalated "
                f"({self.superseded} answered by the strong model, {self.pass2_failed} kept weak after a failed "
                f"pass-2 request); plan {self.plan_uri}").strip()


def execute(config: RunConfig, run_date: date) -> EscalateSummary:
    if not config.escalates:
        raise ConfigError("escalate: the config has no `cascade:` section (nor output.on_unparsable: other_model)")
    from routellm_batch.stages import collect, submit, wait

    uri = plan_uri(config, run_date)
    plan = _read(uri)
    if plan is None:  # the crash-safety point: once written, the choice is fixed
        plan = _plan(config, run_date)
        _write(uri, plan)
    ids = [p for p, e in zip(plan["prompt_id"].to_pylist(), plan["escalate"].to_pylist(), strict=True) if e]
    texts: list[str] = []
    pass2 = None
    if ids:
        p2 = pass2_config(config)
        _routed_pass2(config, p2, run_date, ids)
        texts += [submit.execute(p2, run_date).render(), wait.execute(p2, run_date).render()]
        got = collect.execute(p2, run_date)
        texts.append(got.render())
        if not got.done:
            return EscalateSummary(config.run_id(run_date), plan.num_rows, len(ids), 0, 0, uri, False, tuple(texts))
        pass2 = _partition(p2, "responses", run_date)
    escalated, failed, superseded = _publish(config, run_date, plan, pass2)
    return EscalateSummary(config.run_id(run_date), plan.num_rows, escalated, failed, superseded, uri, True, tuple(texts))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    summary = execute(load_config(args.config), args.run_date)
    print(summary.render())
    return 0 if summary.done else 3
