"""Re-splitting a run date whose batches exist: the plan is versioned, nothing is sent twice.

The routed table is rewritten as a new split would (a changed threshold moves rows between queues;
the input lost some rows and gained others), then submit and collect run again against the same
sandbox, whose books say what was billed.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from batch_sandbox_helpers import FAKE_KEY, KEY_ENV, RUN_DATE, make_config, read_responses, routed_row, write_routed
from routellm_batch.ledger import Ledger
from routellm_batch.sandbox.responders import SyntheticResponder
from routellm_batch.sandbox.server import SandboxServer
from routellm_batch.stages import collect, submit


def _rows(cfg, strong: list[str], weak: list[str], threshold: float) -> list[dict]:
    return [routed_row(cfg, "strong", p, threshold=threshold) for p in strong] + [
        routed_row(cfg, "weak", p, threshold=threshold) for p in weak
    ]


def _resplit(cfg, rows: list[dict]) -> None:
    shutil.rmtree(Path(cfg.table_uri("routed")) / f"run_date={RUN_DATE.isoformat()}")
    write_routed(cfg, rows)


def _by_prompt(cfg) -> dict[str, dict]:
    table = read_responses(cfg).to_pylist()
    counts = Counter(r["prompt_id"] for r in table)
    assert all(n == 1 for n in counts.values()), {p: n for p, n in counts.items() if n > 1}
    return {r["prompt_id"]: r for r in table}


def test_resplit_after_submit_sends_only_new_and_rerouted_rows_and_publishes_one_outcome_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with SandboxServer(responder=SyntheticResponder(seed=5), tick_seconds=0.02, port=0) as srv:
        cfg = make_config(srv, tmp_path / "out", max_requests=4)
        strong1 = [f"s{i}" for i in range(8)]
        weak1 = [f"w{i}" for i in range(8)]
        write_routed(cfg, _rows(cfg, strong1, weak1, threshold=0.5))
        submit.execute(cfg, RUN_DATE)
        assert collect.execute(cfg, RUN_DATE).done
        first = _by_prompt(cfg)
        billed_first = srv.billed()
        assert len(billed_first) == 16

        # A new split: the threshold went down (w1, w2 now strong; s2 now weak), s0, s1 and w0 left the
        # input, n0..n2 are new.
        strong2 = ["s3", "s4", "s5", "s6", "s7", "w1", "w2", "n0", "n1"]
        weak2 = ["w3", "w4", "w5", "w6", "w7", "s2", "n2"]
        _resplit(cfg, _rows(cfg, strong2, weak2, threshold=0.3))
        s = submit.execute(cfg, RUN_DATE)
        assert (s.rows_added, s.rows_left) == (6, 6)  # added: n0-n2 + three re-routed; left: s0, s1, w0 + the same three
        assert collect.execute(cfg, RUN_DATE).done

        second = _by_prompt(cfg)
        assert set(second) == set(strong2 + weak2)  # exactly one final outcome per routed prompt, none for rows that left
        assert {p for p, r in second.items() if r["queue"] == "strong"} == set(strong2)
        # Rows that kept their queue keep their batch and answer: never sent again.
        for p in ["s3", "s4", "s5", "s6", "s7", "w3", "w4", "w5", "w6", "w7"]:
            assert (second[p]["custom_id"], second[p]["batch_id"]) == (first[p]["custom_id"], first[p]["batch_id"])
        # Re-routed rows were answered by their new queue's model, under a new custom_id.
        for p in ["w1", "w2", "s2", "n0", "n1", "n2"]:
            assert second[p]["status"] == "succeeded"
            assert p not in first or second[p]["custom_id"] != first[p]["custom_id"]
        billed = srv.billed()
        assert set(billed.values()) == {1}  # no request billed twice
        # Billed: the 16 first requests, plus one per added or re-routed row; nothing else.
        assert len(billed) == 16 + 6
        new_requests = {cid for (_prov, cid) in billed} - {cid for (_prov, cid) in billed_first}
        assert sorted(second[p]["custom_id"] for p in ["w1", "w2", "s2", "n0", "n1", "n2"]) == sorted(new_requests)
        assert Ledger.for_run(cfg, RUN_DATE).plan_versions("strong") == [1, 2]

        # The same split once more: nothing new to plan, no batch, the same table.
        batches = len(srv.batches())
        s = submit.execute(cfg, RUN_DATE)
        assert (s.rows_added, s.batches_created) == (0, 0)
        assert collect.execute(cfg, RUN_DATE).done
        assert _by_prompt(cfg) == second and len(srv.batches()) == batches and srv.billed() == billed


def test_resplit_moving_a_row_back_reuses_its_first_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """weak -> strong -> weak: the row's first (weak) answer is published again; it is not sent a third time."""
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with SandboxServer(responder=SyntheticResponder(seed=6), tick_seconds=0.02, port=0) as srv:
        cfg = make_config(srv, tmp_path / "out")
        seen = []
        for i, (strong, weak) in enumerate(((["a"], ["b", "c"]), (["a", "b"], ["c"]), (["a"], ["b", "c"]))):
            (_resplit if i else write_routed)(cfg, _rows(cfg, strong, weak, threshold=0.5))
            submit.execute(cfg, RUN_DATE)
            assert collect.execute(cfg, RUN_DATE).done
            responses = _by_prompt(cfg)
            assert {p: r["queue"] for p, r in responses.items()} == {**dict.fromkeys(strong, "strong"), **dict.fromkeys(weak, "weak")}
            seen.append(responses["b"]["custom_id"])
        assert seen[2] == seen[0] != seen[1]
        assert set(srv.billed().values()) == {1} and len(srv.billed()) == 4  # a, b (weak), c, b (strong)
