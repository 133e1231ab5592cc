"""The cascade as a routing policy, through the sandbox and the real OpenAI SDK: pass 1 answers the weak
queue, `escalate` scores the weak answers' log-probabilities (the sandbox makes recorded wrong answers
less confident), escalates the most doubtful within the share to the strong model as a derived run,
survives a SIGKILL after its pass-2 batch was created, publishes one final outcome per prompt, keeps the
weak answers it replaced, and the cost report bills both passes to the cent of the sandbox's own books."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from routellm_batch.config import ConfigError, parse_config
from routellm_batch.sandbox.responders import ReplayResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.stages import collect, escalate, report, submit, wait
from tests.batch_sandbox_helpers import KEY_ENV, RUN_DATE, routed_row, write_routed

DEMO = Path(__file__).resolve().parents[1] / "routellm_batch" / "demo"
STRONG, WEAK = "gpt-4.1", "gpt-4.1-mini"
# The price table's per-million rates (providers/prices.yaml), at the batch discount of one half.
RATES = {STRONG: (Decimal("2.00"), Decimal("8.00")), WEAK: (Decimal("0.40"), Decimal("1.60"))}
N_STRONG, N_WEAK, SHARE = 6, 40, 0.25


def _config(srv: SandboxServer, root: Path, **cascade) -> dict:
    spec = {"provider": "openai", "base_url": srv.openai_base_url, "api_key_env": KEY_ENV, "max_tokens": 512}
    return {
        "job_name": "cascadetest",
        "input": {"uri": str(root / "input")},
        "output_root": str(root),
        "strong": {**spec, "model": STRONG},
        "weak": {**spec, "model": WEAK},
        "batch": {"poll_interval_seconds": 0.05, "create_timeout_seconds": 1.0, "list_lag_seconds": 0.3},
        "cascade": {"scorer": "logprob", "share": SHARE, **cascade},
    }


def _prompts() -> list[dict]:
    with open(DEMO / "prompts.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if isinstance(r.get("question"), str) and r["question"].strip()][: N_STRONG + N_WEAK]


def _weak_correct() -> dict[str, bool]:
    with open(DEMO / "gsm8k_outcomes.csv") as f:
        return {r["prompt_id"]: r["weak_correct"] == "True" for r in csv.DictReader(f)}


def _table(cfg, name: str):
    return ds.dataset(f"{cfg.table_uri(name)}/run_date={RUN_DATE.isoformat()}", format="parquet").to_table()


@pytest.fixture()
def pass1(tmp_path, monkeypatch):
    """Pass 1 done (submit, wait, collect) for 6 strong and 40 weak GSM8K prompts, the weak ones asked
    for logprobs; the sandbox replays the recorded answers (gpt-4.1 -> GPT-4, gpt-4.1-mini -> Mixtral)."""
    monkeypatch.setenv(KEY_ENV, "sandbox")
    aliases = {STRONG: "gpt-4-1106-preview", WEAK: "mistralai/Mixtral-8x7B-Instruct-v0.1"}
    srv = SandboxServer(ReplayResponder.load(DEMO / "gsm8k_demo.csv", aliases), tick_seconds=0.0,
                        state_dir=tmp_path / "sandbox").start()
    try:
        raw = _config(srv, tmp_path)
        cfg = parse_config(raw)
        prompts = _prompts()
        write_routed(cfg, [routed_row(cfg, "strong" if i < N_STRONG else "weak", p["id"], p["question"])
                           for i, p in enumerate(prompts)])
        submit.execute(cfg, RUN_DATE)
        wait.execute(cfg, RUN_DATE)
        assert collect.execute(cfg, RUN_DATE).done
        yield srv, cfg, raw, tmp_path
    finally:
        srv.stop()


def _usd(model: str, records) -> Decimal:
    rate_in, rate_out = RATES[model]
    return sum(((r.input_tokens * rate_in + r.output_tokens * rate_out) / 1_000_000 / 2 for r in records), Decimal(0))


@pytest.mark.slow
def test_cascade_escalates_the_most_doubtful_once_across_a_kill_keeps_superseded_and_bills_both_passes(pass1):
    srv, cfg, raw, root = pass1
    assert cfg.weak.request_template == {"logprobs": True, "top_logprobs": 5}  # the weak requests asked for them
    pass1_batches = {b.id for b in srv.batches()}
    pass1_responses = {r["prompt_id"]: r for r in _table(cfg, "responses").to_pylist()}

    # Killed right after the provider accepted the pass-2 batch, before the ledger knew its id.
    config_file = root / "cascade.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    killed = subprocess.run(
        [sys.executable, "-m", "routellm_batch.cli", "escalate", "--config", str(config_file), "--run-date", RUN_DATE.isoformat()],
        env={**os.environ, "ROUTELLM_BATCH_CRASH_AT": "create.answered"}, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert Path(escalate.plan_uri(cfg, RUN_DATE)).is_file()  # the plan was written before the batch
    assert not Path(cfg.table_uri("superseded")).exists()
    after_kill = [b for b in srv.batches() if b.id not in pass1_batches]
    assert len(after_kill) == 1 and after_kill[0].model == STRONG

    summary = escalate.execute(cfg, RUN_DATE)
    assert summary.done, summary.render()
    again = escalate.execute(cfg, RUN_DATE)  # a finished escalation re-run: same tables, nothing new
    assert (again.escalated, again.superseded) == (summary.escalated, summary.superseded)
    pass2_batches = [b for b in srv.batches() if b.id not in pass1_batches]
    assert [b.id for b in pass2_batches] == [after_kill[0].id]  # adopted, never created again
    assert all(n == 1 for n in srv.billed().values())  # no request paid twice

    # The most doubtful weak answers within the share, ties by prompt_id hash; mostly the wrong ones.
    plan = ds.dataset(escalate.plan_uri(cfg, RUN_DATE), format="parquet").to_table().to_pylist()
    assert len(plan) == N_WEAK
    k = int(SHARE * N_WEAK)
    ranked = sorted(plan, key=lambda r: (-r["doubt"], escalate._tie(r["prompt_id"])))
    escalated = {r["prompt_id"] for r in ranked[:k]}
    assert {r["prompt_id"] for r in plan if r["escalate"]} == escalated
    assert set(pass2_batches[0].custom_ids) and len(pass2_batches[0].custom_ids) == k
    correct = _weak_correct()
    wrong_share = lambda ids: sum(not correct[i] for i in ids) / len(ids)  # noqa: E731
    kept = {r["prompt_id"] for r in plan} - escalated
    assert wrong_share(escalated) > wrong_share(kept) + 0.3

    # One final outcome per routed prompt; escalated ones answered by the strong model in pass 2.
    final = _table(cfg, "responses").to_pylist()
    assert sorted(r["prompt_id"] for r in final) == sorted(pass1_responses)
    by_id = {r["prompt_id"]: r for r in final}
    for pid in escalated:
        assert (by_id[pid]["model"], by_id[pid]["pass"], by_id[pid]["escalation"]) == (STRONG, 2, "escalated")
        assert by_id[pid]["batch_id"] == pass2_batches[0].id
    for pid in set(by_id) - escalated:
        assert (by_id[pid]["pass"], by_id[pid]["escalation"]) == (1, None)
        assert by_id[pid]["response_text"] == pass1_responses[pid]["response_text"]

    # The weak answers replaced are kept, with the usage they were billed for.
    superseded = {r["prompt_id"]: r for r in _table(cfg, "superseded").to_pylist()}
    assert set(superseded) == escalated
    for pid, row in superseded.items():
        weak = pass1_responses[pid]
        assert (row["model"], row["response_text"], row["input_tokens"], row["output_tokens"]) == (
            WEAK, weak["response_text"], weak["input_tokens"], weak["output_tokens"])

    # Both passes billed, per pass, to the cent of the sandbox's billing record priced by hand.
    rows = {(r["model"], r["queue"]): r for r in report.execute(cfg, RUN_DATE).rows}
    billing = srv.billing()
    in_pass2 = [b for b in billing if b.batch_id == pass2_batches[0].id]
    strong1 = [b for b in billing if b.model == STRONG and b.batch_id != pass2_batches[0].id]
    weak1 = [b for b in billing if b.model == WEAK]
    assert len(in_pass2) == k and len(weak1) == N_WEAK and len(strong1) == N_STRONG
    assert rows[(STRONG, "escalated")]["cost_usd"] == _usd(STRONG, in_pass2)
    assert rows[(STRONG, "escalated")]["requests"] == k
    assert rows[(STRONG, "strong")]["cost_usd"] == _usd(STRONG, strong1)
    assert rows[(WEAK, "weak")]["cost_usd"] == _usd(WEAK, weak1)  # superseded answers were paid too
    assert rows[(WEAK, "weak")]["requests"] == N_WEAK
    assert rows[("all", "all")]["cost_usd"] == _usd(STRONG, in_pass2 + strong1) + _usd(WEAK, weak1)


def test_budget_limit_escalates_only_what_the_remaining_usd_covers(pass1):
    srv, cfg, raw, root = pass1
    cfg = parse_config({**raw, "cascade": {"scorer": "logprob", "budget_usd": 0.01}})
    summary = escalate.execute(cfg, RUN_DATE)
    plan = ds.dataset(escalate.plan_uri(cfg, RUN_DATE), format="parquet").to_table().to_pylist()
    picked = [r for r in plan if r["escalate"]]
    # gpt-4.1 at batch price: 12 input tokens + 512 output tokens = 0.002060 USD each -> 4 fit in 0.01
    assert len(picked) == 4 == summary.escalated
    ranked = sorted(plan, key=lambda r: (-r["doubt"], escalate._tie(r["prompt_id"])))
    assert {r["prompt_id"] for r in picked} == {r["prompt_id"] for r in ranked[:4]}


def test_logprob_scorer_with_an_anthropic_weak_model_fails_at_config_time_in_one_line(tmp_path, capsys):
    from routellm_batch.cli import main

    raw = yaml.safe_load((DEMO / "demo.yaml").read_text())  # the demo's weak model is Anthropic's
    raw["cascade"] = {"scorer": "logprob", "share": 0.2}
    with pytest.raises(ConfigError, match="scorer 'logprob' needs logprobs, which the anthropic batch API does not return"):
        parse_config(raw)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", "--config", str(tmp_path / "bad.yaml"), "--run-date", "2026-03-01"]) == 2
    err = capsys.readouterr().err
    assert "choose another scorer (invalid, learned) for the anthropic weak model" in err
    assert "Traceback" not in err


def test_a_failed_pass2_request_keeps_the_weak_answer_final_and_is_not_billed(pass1):
    from routellm_batch.providers.custom_id import make_custom_id
    from routellm_batch.sandbox.faults import Faults

    srv, cfg, raw, root = pass1
    weak_ids = [p["id"] for p in _prompts()[N_STRONG:]]
    failing = set(weak_ids[::2])  # an invalid request is final at once: no retry
    pass2_run = escalate.pass2_config(cfg).run_id(RUN_DATE)
    srv._store.faults = Faults(request_errors={make_custom_id(pass2_run, pid, 1): "invalid_request" for pid in failing},
                               request_error_times=0)
    summary = escalate.execute(cfg, RUN_DATE)
    final = {r["prompt_id"]: r for r in _table(cfg, "responses").to_pylist()}
    plan = ds.dataset(escalate.plan_uri(cfg, RUN_DATE), format="parquet").to_table().to_pylist()
    escalated = {r["prompt_id"] for r in plan if r["escalate"]}
    failed, answered = escalated & failing, escalated - failing
    assert failed and answered and summary.pass2_failed == len(failed)
    assert len(final) == N_STRONG + N_WEAK
    for pid in failed:  # the weak answer stays, and says why
        assert (final[pid]["model"], final[pid]["status"], final[pid]["escalation"]) == (WEAK, "succeeded", "pass2_failed")
    for pid in answered:
        assert (final[pid]["model"], final[pid]["escalation"]) == (STRONG, "escalated")
    assert {r["prompt_id"] for r in _table(cfg, "superseded").to_pylist()} == answered
    rows = {(r["model"], r["queue"]): r for r in report.execute(cfg, RUN_DATE).rows}
    assert rows[(STRONG, "escalated")]["requests"] == len(answered)
    assert rows[(WEAK, "weak")]["requests"] == N_WEAK
