"""`audit`: every night, a small hash-chosen share of each queue answered by the other model and labelled.

    routellm-batch audit --config C --run-date D     (`run` runs it after collect/escalate, before report,
                                                      when the config has an `audit:` section)

1. Pick: a routed prompt is audited when the hash of its prompt_id (salted by `audit.salt`) falls within
   `audit.share` (labels.in_audit_slice): the same prompts on every re-run, about that share of each queue.
2. Answer: weak-queue prompts by the strong model, strong-queue prompts by the weak one, through
   submit / wait / collect under a derived run (routellm_batch.audit_runs) whose ledger resumes: a crashed
   audit is finished by the same command and never pays twice. Only prompts answered tonight are sent; a
   cascade's escalated prompt already has both answers (its weak one is in `superseded`).
3. Label (routellm_batch.labels): by the learn section's reference column and matcher, or by its judge,
   whose requests run through the batch lifecycle as a second derived run; an unusable answer or verdict
   is an error row with its reason, never a guess.
4. Write the `audit` table (one row per audited prompt), `audit_summary` (per queue and overall: tonight's
   routing against all-strong with a 95% bootstrap interval, labels.audit_estimate), and the labelled rows
   into the pool (routellm_batch.labels_pool) that `learn --labels-from-pool` retrains on.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from routellm_batch import labels as L
from routellm_batch.audit_runs import answers_config, judge_config, read_partition, router_name, summary_line
from routellm_batch.batches import QUEUES
from routellm_batch.config import ConfigError, ModelSpec, RunConfig, load_config
from routellm_batch.labels_pool import write_pool_part
from routellm_batch.ledger import atomic_output, filesystem_for
from routellm_batch.providers.pricing import (
    USAGE_COLUMNS,
    TokenUsage,
    batch_discount,
    estimate_request_tokens,
    price_table_for,
    stored_usd,
)
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages import add_run_arguments

__all__ = ["AuditSummary", "add_arguments", "execute", "run"]

PART = "part-00000.parquet"
OTHER = {"strong": "weak", "weak": "strong"}
_ROUTED_FILE = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])


def _file_schema(table: str) -> pa.Schema:
    return pa.schema([f for f in arrow_schema(table) if f.name != "run_date"])


def _write(uri: str, table: pa.Table) -> None:
    fs, path = filesystem_for(uri)
    with atomic_output(fs, path) as out:
        pq.write_table(table, out)


def _spec(config: RunConfig, role: str) -> ModelSpec:
    return config.strong if role == "strong" else config.weak


# -- 1. the slice and tonight's answers ----------------------------------------------------------------

def _routed(config: RunConfig, run_date: date) -> list[dict[str, Any]]:
    routed = read_partition(config, "routed", run_date)
    if routed is None:
        raise FileNotFoundError(f"audit: no routed table for {config.run_id(run_date)}; run split first")
    return routed.to_pylist()


def _tonight(config: RunConfig, run_date: date) -> dict[str, dict[str, dict[str, Any]]]:
    """prompt_id -> role -> tonight's answer row (a cascade's escalated prompt has both roles)."""
    responses = read_partition(config, "responses", run_date)
    if responses is None:
        raise FileNotFoundError(f"audit: no responses for {config.run_id(run_date)}; run collect first")
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for r in responses.to_pylist():
        role = "strong" if r.get("pass") == 2 else r["queue"]
        found.setdefault(r["prompt_id"], {})[role] = r
    superseded = read_partition(config, "superseded", run_date) if config.cascade is not None else None
    for r in superseded.to_pylist() if superseded is not None else []:
        found.setdefault(r["prompt_id"], {})["weak"] = r | {"status": "succeeded"}
    return found


# -- 2. batches under derived runs ---------------------------------------------------------------------

def _routed_row(derived: RunConfig, run_date: date, role: str, base: Mapping[str, Any]) -> dict[str, Any]:
    spec = _spec(derived, role)
    return {k: base.get(k) for k in _ROUTED_FILE.names} | {
        "run_id": derived.run_id(run_date), "model": spec.model, "provider": spec.provider, "router": "audit",
        "strong_win_prob": float(base.get("strong_win_prob") or 0.0), "threshold": float(base.get("threshold") or 0.0),
    }


def _answered(derived: RunConfig, run_date: date, rows: Mapping[str, list[dict[str, Any]]], texts: list[str]) -> dict[str, dict[str, Any]] | None:
    """Have `rows` (queue -> routed rows) answered under the derived run; prompt_id -> responses row, or
    None while its batches are unfinished. The derived routed table is rewritten only when the slice changed
    (a re-split): a crash re-run submits against the same table and its ledger adopts what exists."""
    from routellm_batch.stages import collect, submit, wait

    if not any(rows.values()):
        return {}
    for queue in QUEUES:
        uri = f"{derived.table_uri('routed')}/run_date={run_date.isoformat()}/queue={queue}/{PART}"
        fs, path = filesystem_for(uri)
        wanted = sorted(r["prompt_id"] for r in rows.get(queue, []))
        if fs.get_file_info(path).type.name == "File":
            with fs.open_input_file(path) as f:
                if sorted(pq.read_table(f, columns=["prompt_id"])["prompt_id"].to_pylist()) == wanted:
                    continue
        _write(uri, pa.Table.from_pylist(rows.get(queue, []), schema=_ROUTED_FILE))
    texts += [submit.execute(derived, run_date).render(), wait.execute(derived, run_date).render()]
    got = collect.execute(derived, run_date)
    texts.append(got.render())
    if not got.done:
        return None
    table = read_partition(derived, "responses", run_date)
    return {r["prompt_id"]: r for r in (table.to_pylist() if table is not None else [])}


# -- 3. labels -----------------------------------------------------------------------------------------

def _references(config: RunConfig, run_date: date, column: str) -> dict[str, Any]:
    """prompt_id -> the gold value, read from the input table (the prompts table does not carry it)."""
    id_col = config.input.columns.prompt_id
    fs, path = filesystem_for(config.input.uri_for(run_date))
    dataset = ds.dataset(path, filesystem=fs, format=config.input.format)
    missing = [c for c in (id_col, column) if c not in dataset.schema.names]
    if missing:
        raise ConfigError(f"audit: input column(s) {missing} not in {config.input.uri_for(run_date)} (learn.reference.column)")
    table = dataset.to_table(columns=[id_col, column])
    found: dict[str, Any] = {}
    for pid, gold in zip(table[id_col].to_pylist(), table[column].to_pylist(), strict=True):
        found.setdefault(str(pid), gold)
    return found


def _label_by_reference(config: RunConfig, run_date: date, rows: list[dict[str, Any]]) -> None:
    ref = config.learn.reference  # type: ignore[union-attr]
    assert ref is not None
    gold = _references(config, run_date, ref.column)
    for r in rows:
        if r["label_error"] is None:
            for role in ("strong", "weak"):
                r[f"{role}_label"] = float(L.match_reference(r[f"{role}_answer"], gold.get(r["prompt_id"]), ref.matcher,
                                                             pattern=ref.pattern, field=ref.field, tolerance=ref.tolerance))


def _label_by_judge(config: RunConfig, run_date: date, rows: list[dict[str, Any]], cost: Any, texts: list[str]) -> bool:
    judge = config.learn.judge  # type: ignore[union-attr]
    derived = judge_config(config)
    assert judge is not None and derived is not None
    keys = L.JUDGE_KEYS[judge.mode]
    requests = []
    for r in rows:
        if r["label_error"] is None:
            for key in keys:
                system, prompt = L.judge_request(judge.mode, key, L.question_text(r), r["strong_answer"], r["weak_answer"])
                requests.append(_routed_row(derived, run_date, "strong", {
                    "prompt_id": f"{r['prompt_id']}~{key}", "prompt": prompt, "system": system,
                    "est_input_tokens": estimate_request_tokens(prompt=prompt, system=system)}))
    judged = _answered(derived, run_date, {"strong": requests}, texts)
    if judged is None:
        return False
    for r in rows:
        if r["label_error"] is not None:
            continue
        got = {k: judged.get(f"{r['prompt_id']}~{k}") for k in keys}
        said = {k: (g["response_text"] if g and g["status"] == "succeeded" else None) for k, g in got.items()}
        r["judge_text"] = json.dumps(said)
        r["judge_cost_usd"] = sum((cost(judge.model.model, g) for g in got.values() if g), Decimal(0))
        failed = [f"judge request {k} " + (f"{g['status']}: {g['error_message']}" if g else "missing")
                  for k, g in got.items() if g is None or g["status"] != "succeeded"]
        outcome = "; ".join(failed) if failed else L.judge_label(judge.mode, said)
        if isinstance(outcome, str):
            r["label_error"] = outcome
        else:
            r["strong_label"], r["weak_label"] = outcome
    return True


# -- 4. the estimate -----------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _summary_rows(config: RunConfig, run_date: date, routed: Mapping[str, int], rows: list[dict[str, Any]],
                  label_source: str) -> list[dict[str, Any]]:
    """Per queue: the labels' means and audit_estimate's figures; `all`: the queues weighted by their shares.
    The strong queue gets the strong answer, so its part of routed-minus-all-strong is 0 and the overall
    interval is the weak queue's."""
    total = sum(routed.values())
    base = {"run_id": config.run_id(run_date), "router": router_name(config), "label_source": label_source}
    out = []
    for queue in ("strong", "weak"):
        mine = [r for r in rows if r["queue"] == queue]
        ok = [r for r in mine if r["label_error"] is None]
        share = routed.get(queue, 0) / total if total else 0.0
        row: dict[str, Any] = base | {"queue": queue, "routed": routed.get(queue, 0), "audited": len(mine),
                                      "labelled": len(ok), "share": share,
                                      "audit_cost_usd": sum((r["audit_cost_usd"] for r in mine), Decimal(0))}
        if ok:
            s, w = [r["strong_label"] for r in ok], [r["weak_label"] for r in ok]
            served = [r["strong_label" if r["served"] == "strong" else "weak_label"] for r in ok]
            gap = L.audit_estimate(s, w, share)
            routed_est = gap if served == w else L.audit_estimate(s, served, share)
            row |= {"quality_strong": _mean(s), "quality_weak": _mean(w), "quality_routed": _mean(served),
                    "gap": gap.weak_queue_gap, "gap_ci_low": gap.weak_queue_gap_ci[0], "gap_ci_high": gap.weak_queue_gap_ci[1],
                    "routed_minus_all_strong": routed_est.routed_minus_all_strong + 0.0,
                    "ci_low": routed_est.routed_minus_all_strong_ci[0] + 0.0, "ci_high": routed_est.routed_minus_all_strong_ci[1] + 0.0}
        out.append(row)
    overall: dict[str, Any] = base | {
        "queue": "all", "routed": total, "share": 1.0,
        **{k: sum(r[k] for r in out) for k in ("audited", "labelled")},
        "audit_cost_usd": sum((r["audit_cost_usd"] for r in out), Decimal(0)),
    }
    present = [r for r in out if r["routed"]]
    if present and all(r["labelled"] for r in present):
        overall |= {k: sum(r["share"] * r[k] for r in present) for k in ("quality_strong", "quality_weak", "quality_routed", "gap")}
        overall |= {k: sum(r[k] for r in present) for k in ("routed_minus_all_strong", "ci_low", "ci_high")}
    return out + [overall]


# -- the stage -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuditSummary:
    run_id: str
    audited: int
    requested: int
    """Answers (and judge verdicts) asked of the providers for the slice."""
    label_errors: int
    uri: str
    done: bool
    line: str = ""
    texts: tuple[str, ...] = ()

    def render(self) -> str:
        head = "\n".join(self.texts)
        if not self.done:
            return f"{head}\naudit {self.run_id}: batches not finished; run the same command again".strip()
        return (f"{head}\naudit {self.run_id}: {self.audited} prompt(s) audited, {self.requested} request(s), "
                f"{self.label_errors} error row(s); {self.line}; table {self.uri}").strip()


def execute(config: RunConfig, run_date: date) -> AuditSummary:
    if config.audit is None or config.learn is None:
        raise ConfigError("audit: the config has no `audit:` section (and a `learn:` section labelling it)")
    audit, learn = config.audit, config.learn
    run_id = config.run_id(run_date)
    routed = _routed(config, run_date)
    tonight = _tonight(config, run_date)
    prices, discount = price_table_for(config.pricing), batch_discount(config.pricing)

    def cost(model: str, row: Mapping[str, Any]) -> Decimal:
        if row.get("status") != "succeeded":
            return Decimal(0)
        return stored_usd(prices.cost(model, TokenUsage(**{c: int(row.get(c) or 0) for c in USAGE_COLUMNS}), discount=discount))

    derived = answers_config(config)
    picked = [r for r in routed if L.in_audit_slice(r["prompt_id"], audit.share, audit.salt)]
    asks: dict[str, list[dict[str, Any]]] = {"strong": [], "weak": []}
    for r in picked:
        have = tonight.get(r["prompt_id"], {})
        if r["queue"] in have and have[r["queue"]]["status"] == "succeeded" and OTHER[r["queue"]] not in have:
            asks[OTHER[r["queue"]]].append(_routed_row(derived, run_date, OTHER[r["queue"]], r))
    texts: list[str] = []
    other = _answered(derived, run_date, asks, texts)
    if other is None:
        return AuditSummary(run_id, len(picked), 0, 0, "", False, texts=tuple(texts))

    rows = []
    for r in picked:
        answers = dict(tonight.get(r["prompt_id"], {}))
        if r["prompt_id"] in other:
            answers[OTHER[r["queue"]]] = other[r["prompt_id"]]
        bad = [f"{role} answer {answers[role]['status'] if role in answers else 'missing'}"
               + (f": {answers[role]['error_message']}" if role in answers and answers[role].get("error_message") else "")
               for role in ("strong", "weak") if answers.get(role, {}).get("status") != "succeeded"]
        got = {role: answers.get(role, {}) for role in ("strong", "weak")}
        rows.append({
            "run_id": run_id, "prompt_id": r["prompt_id"], "queue": r["queue"],
            "prompt": r.get("prompt"), "messages": r.get("messages"), "system": r.get("system"),
            "strong_model": config.strong.model, "weak_model": config.weak.model,
            "strong_answer": got["strong"].get("response_text"), "weak_answer": got["weak"].get("response_text"),
            "strong_label": None, "weak_label": None, "label_error": "; ".join(bad) or None, "judge_text": None,
            "served": "strong" if r["queue"] == "strong" or got["strong"].get("pass") == 2 else "weak",
            "strong_cost_usd": cost(config.strong.model, got["strong"]), "weak_cost_usd": cost(config.weak.model, got["weak"]),
            "other_cost_usd": cost(_spec(config, OTHER[r["queue"]]).model, other.get(r["prompt_id"], {})),
            "judge_cost_usd": Decimal(0),
        })
    if learn.reference is not None:
        label_source = f"reference/{learn.reference.matcher}"
        _label_by_reference(config, run_date, rows)
    else:
        assert learn.judge is not None
        label_source = f"judge/{learn.judge.mode}"
        if not _label_by_judge(config, run_date, rows, cost, texts):
            return AuditSummary(run_id, len(picked), sum(map(len, asks.values())), 0, "", False, texts=tuple(texts))
    for r in rows:
        r |= {"label_source": label_source, "audit_cost_usd": r["other_cost_usd"] + r["judge_cost_usd"]}

    day = f"run_date={run_date.isoformat()}"
    uri = f"{config.table_uri('audit')}/{day}"
    _write(f"{uri}/{PART}", pa.Table.from_pylist([{k: r.get(k) for k in _file_schema("audit").names} for r in rows],
                                                 schema=_file_schema("audit")))
    routed_counts = {q: sum(r["queue"] == q for r in routed) for q in ("strong", "weak")}
    summary = _summary_rows(config, run_date, routed_counts, rows, label_source)
    _write(f"{config.table_uri('audit_summary')}/{day}/{PART}",
           pa.Table.from_pylist([{k: r.get(k) for k in _file_schema("audit_summary").names} for r in summary],
                                schema=_file_schema("audit_summary")))
    judge_model = learn.judge.model.model if learn.judge is not None else None
    write_pool_part(config, run_date, "audit", [r | {"source": "audit", "judge_model": judge_model}
                                               for r in rows if r["label_error"] is None])
    judged = len(L.JUDGE_KEYS[learn.judge.mode]) * sum(r["judge_text"] is not None for r in rows) if learn.judge else 0
    return AuditSummary(run_id, len(rows), sum(map(len, asks.values())) + judged,
                        sum(r["label_error"] is not None for r in rows), uri, True, summary_line(summary), tuple(texts))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    summary = execute(load_config(args.config), args.run_date)
    print(summary.render())
    return 0 if summary.done else 3
