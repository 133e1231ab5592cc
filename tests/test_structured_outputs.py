"""Structured outputs and prompt-caching hints end to end, through the real openai and anthropic SDKs
against the sandbox: requests ask each provider for the declared shape, collect turns unusable answers
(not JSON, a schema violation, a label outside the set) into `unparsable` rows with their text kept,
retried as configured, and the responses table gets the typed `answer` column; long shared system
prompts carry the providers' caching hints and are billed as cached."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, RUN_DATE, config_dict, read_responses, routed_row, write_routed
from routellm_batch.config import parse_config
from routellm_batch.ledger import Ledger
from routellm_batch.providers.custom_id import make_custom_id
from routellm_batch.providers.retry import RetryPolicy
from routellm_batch.sandbox.faults import Faults
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.stages import collect, report, submit, wait

FAST = {"retry": RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.2)}
LABELS = ["bug", "billing", "other"]
INVOICE = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "total": {"type": "number", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                                             "required": ["sku", "qty"], "additionalProperties": False}},
        "paid": {"type": "boolean"},
    },
    "required": ["vendor", "total"],
}  # fmt: skip
# A long shared instruction (about 1,500 sandbox tokens, ~2,200 estimated): over either provider's cache minimum.
SYSTEM = " ".join(f"Rule {i}: read the ticket, pick one label, and say nothing else." for i in range(130))


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return FAKE_KEY


def config(srv: SandboxServer, root: Path, *, weak_model: str = "claude-haiku-4-5", **top: Any) -> Any:
    raw = config_dict(srv, root, max_attempts=2)
    raw["weak"]["model"] = weak_model
    for side in ("strong", "weak"):
        raw[side]["max_tokens"] = 512  # room for a whole JSON answer (a cut one is not JSON)
    return parse_config({**raw, **top})


def rows(cfg: Any, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [routed_row(cfg, q, f"{q[0]}{i}", **extra) for q in ("strong", "weak") for i in range(n)]


def run(cfg: Any) -> Any:
    submit.execute(cfg, RUN_DATE, provider_options=FAST)
    wait.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
    summary = collect.execute(cfg, RUN_DATE, timeout=60, provider_options=FAST)
    assert summary.done, summary
    return summary


def cid(prompt_id: str, attempt: int = 1) -> str:
    """The custom_id of a prompt's attempt (so a fault can name it before the run)."""
    return make_custom_id(f"batchtest/{RUN_DATE.isoformat()}", prompt_id, attempt)


def sent_bodies(cfg: Any) -> list[dict[str, Any]]:
    """Every request body the run sent, read back from the ledger's shard inputs."""
    ledger = Ledger.for_run(cfg, RUN_DATE)
    out = []
    for rec in ledger.records():
        for _n, line in ledger.iter_lines(Ledger.input_rel(rec.shard_id)):
            obj = json.loads(line)
            out.append(obj.get("body") or obj.get("params"))
    return out


# What each injected fault looks like on collect (the error_message's start).
FAULTS = {"invalid_json": "not JSON", "schema_violation": "schema violation", "label_outside": "label outside the set"}


def test_label_answers_through_both_sdks_are_typed_and_unusable_ones_are_unparsable_rows(tmp_path: Path) -> None:
    faults = Faults(unparsable_answers={cid(f"{q}{i}"): kind for q in "sw" for i, kind in enumerate(FAULTS, start=1)})
    with SandboxServer(SyntheticResponder(seed=0), faults=faults, tick_seconds=0.02) as srv:
        cfg = config(srv, tmp_path, output={"labels": LABELS})
        write_routed(cfg, rows(cfg, 5))
        summary = run(cfg)

    # The requests asked each provider for the label set, in its own dialect.
    bodies = sent_bodies(cfg)
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": LABELS}}, "required": ["label"],
              "additionalProperties": False}  # fmt: skip
    openai_formats = [b["response_format"] for b in bodies if "response_format" in b]
    anthropic_formats = [b["output_config"]["format"] for b in bodies if "output_config" in b]
    assert openai_formats and all(f == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
                                  for f in openai_formats)  # fmt: skip
    assert len(anthropic_formats) == 5 and all(f["type"] == "json_schema" and f["schema"]["required"] == ["label"]
                                               for f in anthropic_formats)  # fmt: skip

    responses = read_responses(cfg)
    assert responses.schema.field("answer").type == pa.struct([pa.field("label", pa.string())])
    by_id = {r["prompt_id"]: r for r in responses.to_pylist()}
    assert summary.by_status == {"succeeded": 4, "unparsable": 6} and "unparsable" in summary.render()
    for q in ("s", "w"):
        for i, kind in enumerate(FAULTS, start=1):
            r = by_id[f"{q}{i}"]
            assert (r["status"], r["error_type"], r["attempt"]) == ("unparsable", "unparsable", 1)  # keep: no retry
            assert r["error_message"].startswith(FAULTS[kind]) and "\n" not in r["error_message"]
            assert r["response_text"] and r["answer"] is None and r["input_tokens"] > 0  # text kept, answer billed
        for i in (0, 4):
            r = by_id[f"{q}{i}"]
            assert r["status"] == "succeeded" and r["answer"]["label"] in LABELS
            assert json.loads(r["response_text"]) == r["answer"]


def test_unparsable_answers_are_retried_when_the_config_says_so(tmp_path: Path) -> None:
    bad = {cid("s0"): "schema_violation", cid("w0"): "invalid_json", cid("w1"): "invalid_json", cid("w1", 2): "schema_violation"}
    with SandboxServer(SyntheticResponder(seed=0), faults=Faults(unparsable_answers=bad), tick_seconds=0.02) as srv:
        cfg = config(srv, tmp_path, output={"json_schema": INVOICE, "name": "invoice", "on_unparsable": "retry"})
        write_routed(cfg, rows(cfg, 3))
        summary = run(cfg)
        billed = Counter(b.custom_id for b in srv.billing())

    # A schema outside OpenAI's strict subset (optional fields, an open object) is sent non-strict.
    assert {b["response_format"]["json_schema"]["strict"] for b in sent_bodies(cfg) if "response_format" in b} == {False}
    by_id = {r["prompt_id"]: r for r in read_responses(cfg).to_pylist()}
    assert summary.by_status == {"succeeded": 5, "unparsable": 1}
    for pid in ("s0", "w0"):  # asked again of the same model: a valid second answer
        assert (by_id[pid]["status"], by_id[pid]["attempt"]) == ("succeeded", 2)
        assert billed[cid(pid, 1)] == billed[cid(pid, 2)] == 1  # the unusable answer was billed too
    w1 = by_id["w1"]  # unusable twice: final after batch.max_attempts, with why
    assert (w1["status"], w1["attempt"]) == ("unparsable", 2) and "gave up after 2 attempts" in w1["error_message"]
    answer = by_id["s1"]["answer"]
    assert set(answer) == {"vendor", "total", "lines", "paid"} and isinstance(answer["total"], float)
    assert all(isinstance(line["qty"], int) for line in answer["lines"])
    answer_type = read_responses(cfg).schema.field("answer").type
    assert answer_type.field("lines").type == pa.list_(pa.struct([pa.field("sku", pa.string()), pa.field("qty", pa.int64())]))


def test_a_long_shared_system_prompt_gets_caching_hints_and_is_billed_as_cached(tmp_path: Path) -> None:
    with SandboxServer(SyntheticResponder(seed=0), tick_seconds=0.02) as srv:
        cfg = config(srv, tmp_path, weak_model="claude-sonnet-4-5")
        write_routed(cfg, rows(cfg, 4, system=SYSTEM, est_input_tokens=2300))
        run(cfg)
        report.execute(cfg, RUN_DATE)

    bodies = sent_bodies(cfg)
    keys = {b.get("prompt_cache_key") for b in bodies if "messages" in b and "max_completion_tokens" in b}
    assert len(keys) == 1 and next(iter(keys)).startswith("rlb-")  # one short key for the shared prefix
    marks = [b["system"][0].get("cache_control") for b in bodies if isinstance(b.get("system"), list)]
    assert marks == [{"type": "ephemeral"}] * 4
    by_id = {r["prompt_id"]: r for r in read_responses(cfg).to_pylist()}
    first_writes = [by_id[f"w{i}"]["cache_write_5m_tokens"] for i in range(4)]
    assert first_writes[0] > 0 and first_writes[1:] == [0, 0, 0]  # written once at the write price...
    assert [by_id[f"w{i}"]["cached_input_tokens"] > 0 for i in range(4)] == [False, True, True, True]  # ...read after
    assert sum(by_id[f"s{i}"]["cached_input_tokens"] > 0 for i in range(4)) == 3  # OpenAI: every request after the first
    # The cost report bills them as such.
    cost_table = ds.dataset(f"{cfg.table_uri('cost_report')}/run_date={RUN_DATE.isoformat()}", format="parquet").to_table()
    cost = {r["model"]: r for r in cost_table.to_pylist()}
    assert cost["claude-sonnet-4-5"]["cache_write_5m_tokens"] == first_writes[0]
    assert cost["all"]["cached_input_tokens"] == sum(r["cached_input_tokens"] for r in by_id.values()) > 0


def test_no_caching_hints_when_disabled_or_the_prefix_is_short(tmp_path: Path) -> None:
    with SandboxServer(SyntheticResponder(seed=0), tick_seconds=0.02) as srv:
        cfg = config(srv, tmp_path / "off", weak_model="claude-sonnet-4-5", prompt_caching={"enabled": False})
        write_routed(cfg, rows(cfg, 2, system=SYSTEM))
        run(cfg)
        short = config(srv, tmp_path / "short", weak_model="claude-sonnet-4-5")
        write_routed(short, rows(short, 2, system="Answer with one label."))
        run(short)
    for c in (cfg, short):
        bodies = sent_bodies(c)
        assert not any("prompt_cache_key" in b or isinstance(b.get("system"), list) for b in bodies)
    # Without a breakpoint Anthropic caches nothing.
    weak = [r for r in read_responses(cfg).to_pylist() if r["queue"] == "weak"]
    assert all(r["cached_input_tokens"] == r["cache_write_5m_tokens"] == 0 for r in weak)


def test_other_model_sends_unparsable_weak_answers_to_the_strong_model_and_retries_strong_ones(tmp_path: Path) -> None:
    from routellm_batch.stages import escalate
    from routellm_batch.stages.run import STAGES, summary_table

    bad = {cid("s1"): "label_outside", cid("w1"): "invalid_json", cid("w2"): "schema_violation"}
    with SandboxServer(SyntheticResponder(seed=0), faults=Faults(unparsable_answers=bad), tick_seconds=0.02) as srv:
        cfg = config(srv, tmp_path, output={"labels": LABELS, "on_unparsable": "other_model"})
        assert [s.name for s in STAGES if s.applies(cfg)][-3:-1] == ["collect", "escalate"]  # no cascade needed
        write_routed(cfg, rows(cfg, 3))
        first = run(cfg)
        assert first.by_status == {"succeeded": 4, "unparsable": 2}  # s1 retried on the strong model already
        summary = escalate.execute(cfg, RUN_DATE)

    assert summary.done and (summary.escalated, summary.superseded) == (2, 2)
    by_id = {r["prompt_id"]: r for r in read_responses(cfg).to_pylist()}
    assert (by_id["s1"]["status"], by_id["s1"]["attempt"], by_id["s1"]["model"]) == ("succeeded", 2, "gpt-4.1")
    for pid in ("w1", "w2"):
        r = by_id[pid]
        assert (r["status"], r["model"], r["pass"], r["escalation"]) == ("succeeded", "gpt-4.1", 2, "escalated")
        assert r["answer"]["label"] in LABELS
    assert (by_id["w0"]["model"], by_id["w0"]["pass"], by_id["w0"]["escalation"]) == ("claude-haiku-4-5", 1, None)
    superseded = ds.dataset(f"{cfg.table_uri('superseded')}/run_date={RUN_DATE.isoformat()}", format="parquet").to_table()
    assert sorted(superseded.column("prompt_id").to_pylist()) == ["w1", "w2"]  # the billed weak answers, kept
    assert all(t > 0 for t in superseded.column("input_tokens").to_pylist())
    assert re.search(r"unparsable answers +0 \(on_unparsable: other_model\)", summary_table(cfg, RUN_DATE))


def test_the_answer_column_type_follows_the_schema() -> None:
    from routellm_batch.config import StructuredOutput
    from routellm_batch.structured import answer_type, with_answer

    out = StructuredOutput(json_schema={
        "type": "object",
        "$defs": {"money": {"type": "object", "properties": {"amount": {"type": "number"}, "currency": {"enum": ["EUR", "USD"]}}}},
        "properties": {"when": {"type": ["string", "null"]}, "n": {"type": "integer"}, "ok": {"type": "boolean"},
                       "price": {"$ref": "#/$defs/money"}, "tags": {"type": "array", "items": {"type": "string"}},
                       "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "level": {"enum": [1, 2, 3]}},
    })  # fmt: skip
    money = pa.struct([pa.field("amount", pa.float64()), pa.field("currency", pa.string())])
    assert answer_type(out) == pa.struct([
        pa.field("when", pa.string()), pa.field("n", pa.int64()), pa.field("ok", pa.bool_()), pa.field("price", money),
        pa.field("tags", pa.list_(pa.string())), pa.field("either", pa.string()), pa.field("level", pa.int64()),
    ])  # fmt: skip
    answer = {"n": 3, "price": {"amount": 2, "currency": "EUR"}, "either": 7, "tags": ["a"]}
    table = pa.table({"status": ["succeeded", "errored"], "response_text": [json.dumps(answer), None]})
    got = with_answer(table, out).column("answer").to_pylist()
    assert got[1] is None and got[0] == {"when": None, "n": 3, "ok": None, "price": {"amount": 2.0, "currency": "EUR"},
                                         "tags": ["a"], "either": "7", "level": None}  # anyOf: its JSON text


def test_strict_only_when_the_schema_meets_openais_rules() -> None:
    from routellm_batch.structured import openai_strict_ok

    closed = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    assert openai_strict_ok(closed)
    assert not openai_strict_ok({**closed, "required": []})  # an optional field
    assert not openai_strict_ok({k: v for k, v in closed.items() if k != "additionalProperties"})  # an open object
    assert not openai_strict_ok({**closed, "properties": {"a": {"type": "string", "minLength": 2}}})  # outside the subset
    nested = {**closed, "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "integer"}}}}}}
    assert not openai_strict_ok(nested)  # a nested object must be closed too


def test_unparsable_fault_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unparsable_kinds: unknown kind 'typo'"):
        Faults.from_dict({"unparsable_share": 0.1, "unparsable_kinds": ["typo"]})
    with pytest.raises(ValueError, match="unparsable_answers"):
        Faults.from_dict({"unparsable_answers": {"c1": "broken"}})
