"""Prompt templates rendered in Spark, the user's carried columns through to the responses table with
their types, and the router scoring the variable part of a prompt (router.text) or a bounded view of it."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from routellm_batch.config import TextView, parse_config
from routellm_batch.prompt_templates import row_renderer
from routellm_batch.stages.validate import InputError, execute
from routellm_batch.text_view import bounded_view

RUN_DATE = dt.date(2026, 11, 24)

SYSTEM = "You label {{ lang }} product reviews. Answer with one word: positive or negative."
USER = "Stars: {{ stars }} ({{ 100 // stars }} points per star)\nReview: {{ text }}"
CARRY = ["review_key", "shop_id", "price", "day", "ts", "tags", "meta"]
LANGS = ("en", "fr", "ja")


def review_rows(n: int) -> list[dict[str, Any]]:
    """Reviews in unicode of growing length, languages interleaved (so rows sharing a system prompt start apart)."""
    rows = []
    for i in range(n):
        lang = LANGS[i % 3]
        text = {"en": "Great kettle, boils fast. ", "fr": "Très bien, l'eau bout vite — ", "ja": "とても良いケトルです。☕ "}[lang]
        rows.append({
            "id": f"r{i:02d}", "text": text * (1 + i), "stars": 1 + i % 5, "lang": lang,
            "review_key": f"K-{i}", "shop_id": 1000 + i, "price": Decimal(f"{i}.25"),
            "day": dt.date(2026, 1, 1 + i), "ts": dt.datetime(2026, 1, 1, 12, i, tzinfo=dt.timezone.utc),
            "tags": [lang, "kettle"], "meta": {"source": "web", "rank": i},
        })
    return rows


def write_input(path: Path, rows: list[dict[str, Any]]) -> Path:
    schema = pa.schema([
        ("id", pa.string()), ("text", pa.string()), ("stars", pa.int64()), ("lang", pa.string()),
        ("review_key", pa.string()), ("shop_id", pa.int64()), ("price", pa.decimal128(10, 2)), ("day", pa.date32()),
        ("ts", pa.timestamp("us", tz="UTC")), ("tags", pa.list_(pa.string())),
        ("meta", pa.struct([("source", pa.string()), ("rank", pa.int64())])),
    ])  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "part-0.parquet")
    return path


def config_dict(tmp_path: Path, uri: Path, fmt: str = "parquet", **input_extra: Any) -> dict[str, Any]:
    return {
        "job_name": "tpl",
        "input": {"uri": str(uri), "format": fmt, "columns": {"prompt_id": "id"},
                  "template": {"system": SYSTEM, "user": USER}, "carry": CARRY, **input_extra},
        "output_root": str(tmp_path / "out"),
        "router": {"kind": "length", "text": "text", "view": {"head_chars": 20, "tail_chars": 10}},
        "threshold": {"policy": "strong_fraction", "fraction": 0.5},
        "strong": {"provider": "openai", "model": "gpt-4.1", "api_key_env": "OPENAI_API_KEY"},
        "weak": {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key_env": "ANTHROPIC_API_KEY"},
        "quarantine": {"max_share": 1.0, "max_prompt_chars": 100_000},
    }


# --- pure Python -----------------------------------------------------------------------------------------


def test_a_row_renders_unicode_and_a_broken_row_gives_one_line_not_an_exception():
    render = row_renderer(USER, SYSTEM)
    prompt, system, error = render({"stars": 4, "text": "とても良い ☕ — très bien", "lang": "ja"})
    assert error is None
    assert prompt == "Stars: 4 (25 points per star)\nReview: とても良い ☕ — très bien"
    assert system.startswith("You label ja product reviews.")

    assert render({"stars": 0, "text": "x", "lang": "en"}) == (
        None, None, "input.template.user: ZeroDivisionError: integer division or modulo by zero")
    # The sandbox refuses Python internals; that too is the row's one-line error.
    _, _, error = row_renderer("{{ text.__class__.__mro__ }}", None)({"text": "x"})
    assert error.startswith("input.template.user: ") and "\n" not in error


@pytest.mark.parametrize(
    "change,message",
    [
        ({"columns": {"prompt_id": "id", "system": "sys"}}, "columns.system not read when a template is set"),
        ({"carry": ["review_key", "Prompt_ID"]}, "['Prompt_ID'] are the product's own column names"),
        ({"carry": ["_id"]}, "['_id'] are the product's own column names (or start with '_')"),
        ({"carry": ["key", "KEY"]}, "a column is named twice"),
    ],
)
def test_a_config_that_would_ignore_or_clash_with_a_column_fails_at_load(tmp_path, change, message):
    from routellm_batch.config import ConfigError

    raw = config_dict(tmp_path, tmp_path / "in")
    raw["input"] |= change
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert message in str(err.value)


def test_the_view_is_the_same_in_spark_and_python(spark):
    from routellm_batch.spark.scoring import bounded_view_col

    views = [(20, 10), (0, 7), (5, 0), (3, 3)]
    texts = ["", "short", "x" * 30, "y" * 31, "とても良いケトルです。☕ " * 7, "é" * 5 + "😀" * 40 + "ß" * 9]
    df = spark.createDataFrame([(t,) for t in texts], "t string")
    cut = [bounded_view_col(df["t"], TextView(head_chars=h, tail_chars=t)) for h, t in views]
    got = [tuple(r) for r in df.select(*cut).collect()]
    assert got == [tuple(bounded_view(text, h, t) for h, t in views) for text in texts]
    assert got[5] != (texts[5],) * len(views)  # the long texts were cut


# --- validate ------------------------------------------------------------------------------------------


def test_a_column_the_config_names_but_the_input_lacks_fails_before_any_work(spark, tmp_path):
    uri = write_input(tmp_path / "in", review_rows(3))
    cases = [
        ({"template": {"user": "{{ txt }} and {{ body }}"}}, "'body' (input.template.user), 'txt' (input.template.user)"),
        ({"template": {"system": "You label {{ language }} reviews.", "user": "{{ text }}"}}, "'language' (input.template.system)"),
        ({"carry": ["review_key", "order_no"]}, "'order_no' (input.carry)"),
    ]
    for change, named in cases:
        raw = config_dict(tmp_path, uri)
        raw["input"] |= change
        with pytest.raises(InputError) as err:
            execute(parse_config(raw), RUN_DATE, spark)
        message = str(err.value)
        assert named in message and "\n" not in message, message
    raw = config_dict(tmp_path, uri)
    raw["router"]["text"] = "review_text"
    with pytest.raises(InputError, match=r"'review_text' \(router.text\)"):
        execute(parse_config(raw), RUN_DATE, spark)
    assert not (tmp_path / "out").exists()  # nothing written


def test_json_input_reads_named_columns_by_spark_inference_and_keeps_the_quarantine_rules(spark, tmp_path):
    from routellm_batch.spark.tables import read_run_table

    src = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "text": "Très bon ☕", "stars": 5, "lang": "fr", "shop_id": 7, "score": 0.5, "tag": "x"},
        {"id": "b", "text": "Bad", "stars": 1, "lang": "en", "shop_id": 8, "score": 1, "tag": 3},
        {"id": "c", "stars": 2, "lang": "en", "shop_id": 9, "score": 2.5, "tag": "y"},  # no text: quarantined
    ]
    src.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n")
    raw = config_dict(tmp_path, src, fmt="json", carry=["shop_id", "score", "tag"])
    config = parse_config(raw)

    summary = execute(config, RUN_DATE, spark)

    assert summary.reasons == {"null_template_value": 1}
    prompts = read_run_table(spark, config, "prompts", RUN_DATE)
    types = {c: prompts.schema[c].dataType.simpleString() for c in ("shop_id", "score", "tag")}
    assert types == {"shop_id": "bigint", "score": "double", "tag": "string"}  # mixed types widen to string
    got = {r.prompt_id: (r.prompt, r.shop_id, r.score, r.tag) for r in prompts.collect()}
    assert got == {"a": ("Stars: 5 (20 points per star)\nReview: Très bon ☕", 7, 0.5, "x"),
                   "b": ("Stars: 1 (100 points per star)\nReview: Bad", 8, 1.0, "3")}

    raw["input"]["carry"] = ["shop_id", "order_no"]
    with pytest.raises(InputError, match=r"'order_no' \(input.carry\)"):
        execute(parse_config(raw), RUN_DATE, spark)


# --- through the run -------------------------------------------------------------------------------------


def test_a_templated_run_quarantines_bad_rows_scores_the_text_view_and_answers_carry_the_users_columns(
    spark, tmp_path, monkeypatch
):
    from routellm_batch.providers.retry import RetryPolicy
    from routellm_batch.routers.length import LengthRouter
    from routellm_batch.sandbox.faults import Faults
    from routellm_batch.sandbox.responders import SyntheticResponder
    from routellm_batch.sandbox.server import SandboxServer
    from routellm_batch.spark.tables import read_run_table
    from routellm_batch.stages import collect, submit, wait
    from routellm_batch.stages.split import score_and_split

    monkeypatch.setenv("ROUTELLM_TEST_KEY", "sk-test")
    rows = review_rows(20)
    rows[1]["text"] = None  # a null the template names
    rows[2]["stars"] = 0  # the template divides by it
    uri = write_input(tmp_path / "in", rows)
    fast = {"retry": RetryPolicy(attempts=8, initial_wait=0.01, max_wait=0.2)}
    with SandboxServer(responder=SyntheticResponder(seed=0), faults=Faults(), tick_seconds=0, port=0) as srv:
        raw = config_dict(tmp_path, uri)
        raw["strong"] |= {"base_url": srv.openai_base_url, "api_key_env": "ROUTELLM_TEST_KEY"}
        raw["weak"] |= {"base_url": srv.anthropic_base_url, "api_key_env": "ROUTELLM_TEST_KEY"}
        raw["batch"] = {"poll_interval_seconds": 0.05}
        config = parse_config(raw)
        summary = execute(config, RUN_DATE, spark)
        score_and_split(config, RUN_DATE, spark)
        submit.execute(config, RUN_DATE, provider_options=fast)
        wait.execute(config, RUN_DATE, timeout=60, provider_options=fast)
        assert collect.execute(config, RUN_DATE, timeout=60, provider_options=fast).done

    # Validate: a row with a null named column or a failing render is quarantined with its one-line reason.
    assert (summary.valid_rows, summary.reasons) == (18, {"null_template_value": 1, "template_error": 1})
    quarantine = {r.prompt_id: r for r in read_run_table(spark, config, "quarantine", RUN_DATE).collect()}
    assert quarantine["r01"].reason == "null_template_value"
    assert quarantine["r01"].detail == "column 'text' is null; input.template.user names it"
    assert quarantine["r02"].reason == "template_error"
    assert quarantine["r02"].detail == "input.template.user: ZeroDivisionError: integer division or modulo by zero"
    # The prompts Spark rendered are the templates' own rendering, unicode intact; the router's text beside them.
    render = row_renderer(USER, SYSTEM)
    rows = [r for r in rows if r["id"] not in ("r01", "r02")]
    by_id = {r["id"]: r for r in rows}
    prompts = read_run_table(spark, config, "prompts", RUN_DATE).collect()
    assert {r.prompt_id: (r.prompt, r.system, None, r.router_text) for r in prompts} == {
        i: (*render(r), r["text"]) for i, r in by_id.items()}

    # The router scored the review text's head+tail, not the rendered prompt with its instructions.
    routed_dir = tmp_path / "out" / "routed" / f"run_date={RUN_DATE.isoformat()}"
    routed = ds.dataset(routed_dir, format="parquet", partitioning="hive").to_table().to_pylist()
    assert len(routed) == 18
    expected = LengthRouter().score([bounded_view(r["text"], 20, 10) for r in rows])
    assert {r["prompt_id"]: pytest.approx(r["strong_win_prob"]) for r in routed} == {
        r["id"]: pytest.approx(float(p)) for r, p in zip(rows, expected, strict=True)}
    # Rows sharing a system prompt are adjacent in each routed file (provider prompt caching).
    for part in routed_dir.rglob("*.parquet"):
        systems = pq.read_table(part, columns=["system"]).column("system").to_pylist()
        runs = [s for i, s in enumerate(systems) if i == 0 or systems[i - 1] != s]
        assert len(runs) == len(set(systems)), (part.name, systems)

    # Every answer carries the user's columns, joined to its own row, with the input's Spark types.
    responses_dir = tmp_path / "out" / "responses" / f"run_date={RUN_DATE.isoformat()}"
    responses = spark.read.parquet(str(responses_dir))
    source = spark.read.parquet(str(uri))
    assert {c: responses.schema[c].dataType.simpleString() for c in CARRY} == {
        c: source.schema[c].dataType.simpleString() for c in CARRY}
    got = {r.prompt_id: (r.status, *(r[c] for c in CARRY)) for r in responses.collect()}
    want = {r.id: ("succeeded", *(r[c] for c in CARRY)) for r in source.collect() if r.id in by_id}
    assert got == want
