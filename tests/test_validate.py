"""Stage 1: every input row ends valid or quarantined with the right reason; nothing is lost."""

from __future__ import annotations

import json
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routellm_batch.config import parse_config
from routellm_batch.stages.validate import InputError, QuarantineLimitExceeded, execute

RUN_DATE = date(2026, 11, 22)


def make_config(tmp_path, uri, fmt="json", columns=None, max_share=1.0, max_chars=60):
    return parse_config(
        {
            "job_name": "t",
            "input": {"uri": str(uri), "format": fmt, "columns": columns or {"prompt_id": "id", "prompt": "q", "max_tokens": "mt"}},
            "output_root": str(tmp_path / "out"),
            "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
            "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
            "quarantine": {"max_share": max_share, "max_prompt_chars": max_chars},
        }
    )


def read(spark, config, name, run_date=RUN_DATE):
    from routellm_batch.spark.tables import read_run_table

    return read_run_table(spark, config, name, run_date)


# One of every bad-row kind, mixed with valid rows, in one JSON Lines table: (line, expected reason).
MIXED = [
    ('{"id": "ok-1", "q": "What is 2+2?", "mt": 16}', None),
    ('{"id": "ok-2", "q": "Summarize this."}', None),
    ('{"id": "dup", "q": "first of a duplicated id"}', None),
    ('{"id": "dup", "q": "second of a duplicated id"}', "duplicate_prompt_id"),
    ('{"id": "no-prompt"}', "missing_prompt"),
    ('{"id": "null-prompt", "q": null}', "missing_prompt"),
    ('{"id": "blank", "q": "   "}', "empty_prompt"),
    ('{"id": "long", "q": "' + "x" * 61 + '"}', "prompt_too_long"),
    ('{"id": "num-prompt", "q": 123}', "wrong_type"),
    ('{"id": "obj-prompt", "q": {"text": "hi"}}', "wrong_type"),
    ('{"id": "bad-mt", "q": "fine", "mt": "lots"}', "wrong_type"),
    ('{"id": "zero-mt", "q": "fine", "mt": 0}', "wrong_type"),
    ('{"q": "who am i"}', "missing_prompt_id"),
    ('{"id": "", "q": "empty id"}', "missing_prompt_id"),
    ("this line is not json", "malformed_record"),
    ('["an", "array"]', "malformed_record"),
]


def test_every_bad_row_kind_lands_in_quarantine_with_its_reason(spark, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(line for line, _ in MIXED) + "\n")
    config = make_config(tmp_path, src)

    summary = execute(config, RUN_DATE, spark)

    expected_bad = [(line, reason) for line, reason in MIXED if reason]
    assert summary.input_rows == len(MIXED)
    assert summary.valid_rows + summary.quarantined_rows == summary.input_rows
    assert summary.quarantined_rows == len(expected_bad)
    quarantine = {r.raw_record: r for r in read(spark, config, "quarantine").collect()}
    assert {line: quarantine[line].reason for line, _ in expected_bad} == dict(expected_bad)
    for r in quarantine.values():
        assert r.run_id == "t/2026-11-22" and r.detail and r.source_file.endswith("in.jsonl")
    assert "123" not in quarantine['{"id": "num-prompt", "q": 123}'].detail  # says what is wrong, not the value
    assert quarantine['{"id": "dup", "q": "second of a duplicated id"}'].prompt_id == "dup"

    valid = {r.prompt_id: r for r in read(spark, config, "prompts").collect()}
    assert set(valid) == {"ok-1", "ok-2", "dup"}
    assert valid["dup"].prompt == "first of a duplicated id"
    assert valid["ok-1"].max_tokens == 16 and valid["ok-2"].max_tokens is None
    assert "not met: expect_column_values_to_be_unique" in summary.input_suite  # the input suite reports what rows broke


def test_duplicate_kept_is_the_first_by_file_then_position(spark, tmp_path):
    src = tmp_path / "parquet"
    src.mkdir()
    ids = ["a", "b", "a", "c", "a"]
    pq.write_table(pa.table({"id": ids, "q": [f"row {i}" for i in range(5)]}), src / "part-1.parquet")
    pq.write_table(pa.table({"id": ["a"], "q": ["row in the first file"]}), src / "part-0.parquet")
    config = make_config(tmp_path, src, fmt="parquet", columns={"prompt_id": "id", "prompt": "q"})

    summary = execute(config, RUN_DATE, spark)

    assert summary.reasons == {"duplicate_prompt_id": 3}
    valid = {r.prompt_id: r.prompt for r in read(spark, config, "prompts").collect()}
    assert valid == {"a": "row in the first file", "b": "row 1", "c": "row 3"}


def test_chat_messages_column_is_validated_per_row(spark, tmp_path):
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    rows = {
        "id": ["m1", "m2", "m3", "m4"],
        "chat": [
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            [],
            [{"role": "wizard", "content": "abracadabra"}],
            None,
        ],
    }
    src = tmp_path / "chat.parquet"
    pq.write_table(pa.table(rows, schema=pa.schema([("id", pa.string()), ("chat", pa.list_(message))])), src)
    config = make_config(tmp_path, src, fmt="parquet", columns={"prompt_id": "id", "prompt": None, "messages": "chat"})

    summary = execute(config, RUN_DATE, spark)

    assert summary.reasons == {"empty_prompt": 1, "wrong_type": 1, "missing_prompt": 1}
    [valid] = read(spark, config, "prompts").collect()
    assert valid.prompt_id == "m1" and [m.role for m in valid.messages] == ["system", "user"]


def test_csv_max_tokens_that_is_not_an_integer_is_wrong_type(spark, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('id,q,mt\nc1,"a, quoted prompt",32\nc2,another,many\n')
    config = make_config(tmp_path, src, fmt="csv")

    summary = execute(config, RUN_DATE, spark)

    assert summary.reasons == {"wrong_type": 1}
    [q] = read(spark, config, "quarantine").collect()
    assert q.prompt_id == "c2" and "mt is not an integer" in q.detail and json.loads(q.raw_record)["mt"] == "many"


def test_missing_required_column_fails_before_any_work(spark, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["hello"]}), src)
    config = make_config(tmp_path, src, fmt="parquet", columns={"prompt_id": "id", "prompt": "question"})

    with pytest.raises(InputError, match=r"lacks required column\(s\) 'question' \(input.columns.prompt\); it has: id, text"):
        execute(config, RUN_DATE, spark)
    assert not (tmp_path / "out").exists()


def test_mistyped_prompt_column_fails_naming_it(spark, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "q": [42]}), src)
    config = make_config(tmp_path, src, fmt="parquet", columns={"prompt_id": "id", "prompt": "q"})

    with pytest.raises(InputError, match=r"input column 'q' \(prompt\) has type bigint; expected StringType"):
        execute(config, RUN_DATE, spark)


def test_quarantine_over_the_limit_fails_the_run_with_a_summary_and_keeps_the_rows(spark, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "q": "fine"}\n{"id": "b", "q": ""}\n{"id": "c"}\n')
    config = make_config(tmp_path, src, max_share=0.5)

    with pytest.raises(QuarantineLimitExceeded) as exc:
        execute(config, RUN_DATE, spark)

    message = str(exc.value)
    assert "3 rows in, 1 valid, 2 quarantined (66.67%)" in message and "quarantine.max_share=50.00%" in message
    assert read(spark, config, "quarantine").count() == 2  # kept for inspection
    assert not (tmp_path / "out" / "prompts" / "run_date=2026-11-22").exists()  # nothing for later stages


def test_rerun_replaces_only_its_own_date(spark, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "q": "one"}\n{"id": "b", "q": ""}\n')
    config = make_config(tmp_path, src)
    other = date(2026, 11, 21)
    execute(config, other, spark)
    execute(config, RUN_DATE, spark)
    execute(config, RUN_DATE, spark)

    for name, n in (("prompts", 1), ("quarantine", 1)):
        assert read(spark, config, name).count() == n
        assert read(spark, config, name, other).count() == n
