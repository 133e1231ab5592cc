"""The run report people read: built from real Parquet tables and ledger records, checked in a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from datetime import date, datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from routellm_batch.config import QualitySettings, SandboxSettings, load_config, parse_config
from routellm_batch.ledger import Ledger, ShardRecord, ShardState, Transition
from routellm_batch.run_report import (
    KnownOutcomesError,
    quality_figures,
    read_known_outcomes,
    report_uri,
    write_run_report,
)
from routellm_batch.schemas import arrow_schema
from routellm_batch.stages import report

RUN_DATE = date(2026, 12, 1)
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed here (apt-get install -y chromium; .ci/run installs it)"
)


# --------------------------------------------------------------------------------------------- run tables
def demo_config(tmp_path: Path, known_outcomes: bool = True):
    """The embedded demo config (its known outcomes included), writing under tmp_path, no sandbox."""
    config = load_config()
    update = {"output_root": str(tmp_path / "out"), "sandbox": SandboxSettings()}
    if not known_outcomes:
        update["quality"] = QualitySettings()
    return config.model_copy(update=update)


def _write(config, table: str, rows: list[dict], subdir: str = "") -> None:
    partition_columns = {"run_date", "queue"} if table == "routed" else {"run_date"}
    schema = pa.schema([f for f in arrow_schema(table) if f.name not in partition_columns])
    # Columns the tables gain later (token kinds, counts) are zero here unless a test sets them.
    zeros = {f.name: 0 for f in schema if not f.nullable and pa.types.is_integer(f.type)}
    rows = [zeros | row for row in rows]
    folder = Path(config.table_uri(table)) / f"run_date={RUN_DATE.isoformat()}" / subdir
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-00000.parquet")


def write_run(config, prompt_ids, scores, strong_ids, failures=None, quarantine=(), usage=None):
    """Routed, responses, quarantine and ledger as the stages lay them out, then the real report stage.

    failures: prompt_id -> (status, error_type, message) for rows without a succeeded answer.
    usage: prompt_id -> token counts that replace the default ones (e.g. cached input).
    """
    failures, usage = failures or {}, usage or {}
    run_id = config.run_id(RUN_DATE)
    threshold = min((s for p, s in zip(prompt_ids, scores) if p in strong_ids), default=1.0)
    routed = {"strong": [], "weak": []}
    responses = []
    for i, (pid, score) in enumerate(zip(prompt_ids, scores)):
        queue = "strong" if pid in strong_ids else "weak"
        spec = config.strong if queue == "strong" else config.weak
        routed[queue].append({
            "run_id": run_id, "prompt_id": pid, "prompt": f"question {pid}", "max_tokens": 512,
            "strong_win_prob": float(score), "model": spec.model, "provider": spec.provider,
            "router": "default@3f2a9c1e", "threshold": float(threshold), "est_input_tokens": 40 + i % 60,
        })
        status, error_type, message = failures.get(pid, ("succeeded", None, None))
        ok = status == "succeeded"
        responses.append({
            "run_id": run_id, "prompt_id": pid, "queue": queue, "model": spec.model, "provider": spec.provider,
            "batch_id": f"batch_{queue}_0", "custom_id": f"{queue}-0-{i}", "status": status,
            "response_text": "The answer is 42." if ok else None, "finish_reason": "stop" if ok else None,
            "input_tokens": 45 + i % 60 if ok else None, "output_tokens": 120 + (7 * i) % 200 if ok else None,
            "error_type": error_type, "error_message": message, "attempt": 3 if not ok else 1, "served_by": "batch",
        } | usage.get(pid, {}))
    for queue, rows in routed.items():
        if rows:
            _write(config, "routed", rows, f"queue={queue}")
    _write(config, "responses", responses)
    _write(config, "quarantine", [
        {"run_id": run_id, "prompt_id": pid, "reason": reason, "detail": detail, "source_file": "prompts.jsonl",
         "raw_record": "{}"} for pid, reason, detail in quarantine
    ])
    write_ledger(config, sorted(strong_ids), [p for p in prompt_ids if p not in strong_ids], failures)
    report.execute(config, RUN_DATE)  # the real cost account, and the run report it ends with


def write_ledger(config, strong_ids, weak_ids, failures) -> None:
    """Shard records as the submit/wait/collect stages leave them: one shard per queue, a retry shard when rows failed."""
    ledger = Ledger.for_run(config, RUN_DATE)
    t0 = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)

    def record(queue, attempt, rows, start_min, end_min, end_state, error=None):
        spec = config.strong if queue == "strong" else config.weak
        at = lambda m: t0 + timedelta(minutes=m)  # noqa: E731
        history = (
            Transition(ShardState.PLANNED, at(start_min - 1), "planned"),
            Transition(ShardState.SUBMITTING, at(start_min), "intent"),
            Transition(ShardState.SUBMITTED, at(start_min + 0.5), "created"),
            Transition(end_state, at(end_min), "terminal"),
            Transition(ShardState.COLLECTED, at(end_min + 1), "collected"),
        )
        shard_id = f"{queue}-a{attempt}-00000"
        ledger.put(ShardRecord(
            run_id=ledger.run_id, shard_id=shard_id, queue=queue, provider=spec.provider, model=spec.model,
            attempt=attempt, index=0, state=ShardState.COLLECTED, row_count=rows, bytes=rows * 900,
            est_input_tokens=rows * 60, input_file=ledger.uri_of(Ledger.input_rel(shard_id)),
            map_file=ledger.uri_of(Ledger.map_rel(shard_id)), created_at=at(start_min - 1), updated_at=at(end_min + 1),
            batch_id=f"batch_{queue}_{attempt}", error=error, history=history,
        ))

    if strong_ids:
        record("strong", 1, len(strong_ids), 1, 18, ShardState.COMPLETED)
    if weak_ids:
        record("weak", 1, len(weak_ids), 1.2, 11, ShardState.COMPLETED)
    if failures:
        record("weak", 2, len(failures), 13, 30, ShardState.EXPIRED, error="batch expired before every request ran")


def demo_run(config, failures=None):
    """The demo's 200 prompts with known outcomes, scored by an informative but imperfect router, 30% strong."""
    known = read_known_outcomes(load_config().quality.known_outcomes)
    rng = np.random.default_rng(7)
    gain = (known["strong_correct"] - known["weak_correct"]).to_numpy()
    scores = np.clip(0.35 + 0.25 * gain + rng.normal(0, 0.15, len(known)), 0.0, 1.0).astype(np.float32)
    order = np.argsort(-scores, kind="stable")
    ids = known["prompt_id"].tolist()
    strong = {ids[i] for i in order[: int(0.3 * len(ids))]}
    quarantine = [
        ("bad-empty", "empty_prompt", "prompt is blank"),
        ("gsm8k-0000", "duplicate_prompt_id", "prompt_id gsm8k-0000 appears 2 times"),
        (None, "missing_prompt_id", "no value in column id"),
        ("bad-max-tokens", "wrong_type", "max_tokens: expected an integer, got 'lots'"),
    ]
    write_run(config, ids, scores, strong, failures, quarantine)
    return ids, scores, strong


class _Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, keyed by the id of the section holding it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.section, self.row, self.cell = "", None, None

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.section = dict(attrs).get("id", "")
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[self.section][-1].append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def page_tables(index: Path) -> dict[str, list[list[list[str]]]]:
    parser = _Tables()
    parser.feed(index.read_text())
    return parser.tables


# --------------------------------------------------------------------------------------------- browser
def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120,
    )


IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const seen = [...document.images].map(i => ({src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0}));
  const out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


def assert_renders_in_browser(index: Path, tmp_path: Path) -> Path:
    """Chromium loads the page: every <img> decodes, and a 1280x2000 screenshot is not blank. Returns it."""
    from matplotlib.image import imread

    # The report itself carries no script; the probe goes into a copy beside it (same folder, same images).
    probe = index.with_name("_probe.html")
    probe.write_text(index.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    try:
        dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    finally:
        probe.unlink()
    found = re.search(r'<pre id="image-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the page did not finish loading in chromium: {dom[-500:]!r}"
    images = json.loads(html.unescape(found.group(1)))
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert sorted(i["src"] for i in images) == pngs
    assert [i["src"] for i in images if not i["ok"]] == []

    shot = tmp_path / "screenshot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", index.as_uri())
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    distinct = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert pixels.std() > 0.05 and distinct > 100, f"blank-looking screenshot ({distinct} colours)"
    return shot


# --------------------------------------------------------------------------------------------- tests
@needs_chromium
def test_demo_run_report_renders_every_section_in_chromium(tmp_path):
    config = demo_config(tmp_path)
    demo_run(config, failures={"gsm8k-0003": ("expired", "batch_expired", "the batch expired before it ran")})
    result = write_run_report(config, RUN_DATE)

    index = Path(report_uri(config, RUN_DATE)) / "index.html"
    assert result.uri == str(index) and result.files[-1] == str(index)
    assert sorted(p.name for p in index.parent.iterdir()) == [
        "cost.png", "index.html", "quality.png", "scores.png", "timeline.png"]
    page = index.read_text()
    assert "<script" not in page and "http" not in page.split("<body>")[1], "the page must be self-contained"
    tables = page_tables(index)
    assert [r[0] for r in tables["cost"][0][1:]] == ["gpt-4.1", "claude-haiku-4-5", "all"]
    assert tables["quarantine"][0][1:] == [
        ["duplicate_prompt_id", "1", "gsm8k-0000: prompt_id gsm8k-0000 appears 2 times"],
        ["empty_prompt", "1", "bad-empty: prompt is blank"],
        ["missing_prompt_id", "1", "(no id): no value in column id"],
        ["wrong_type", "1", "bad-max-tokens: max_tokens: expected an integer, got 'lots'"],
    ]
    assert "default@3f2a9c1e" in page and "version 2026-12-01" in page  # router and price table versions
    assert [r[0] for r in tables["timeline"][0][1:]] == ["strong a1 #0", "weak a1 #0", "weak a2 #0"]
    assert_renders_in_browser(index, tmp_path)


def test_quality_figures_are_the_routed_run_against_all_strong_and_all_weak_on_the_same_prompts(tmp_path):
    outcomes = tmp_path / "outcomes.csv"
    # p4 is known but not routed (another night's prompt): it must not count.
    outcomes.write_text("prompt_id,strong_correct,weak_correct\np0,1,0\np1,1,1\np2,0,0\np3,1,0\np4,0,1\n")
    config = demo_config(tmp_path).model_copy(update={"quality": QualitySettings(known_outcomes=str(outcomes))})
    # cached input on both sides: priced at each model's cached rate, as the cost report prices it
    usage = {"p0": {"input_tokens": 2000, "cached_input_tokens": 1500},
             "p1": {"input_tokens": 3000, "cached_input_tokens": 1000, "cache_write_5m_tokens": 500}}
    write_run(config, ["p0", "p1", "p2", "p3"], [0.9, 0.2, 0.7, 0.1], strong_ids={"p0", "p2"}, usage=usage)

    f = quality_figures(config, RUN_DATE)
    # routed: p0 strong (1) + p1 weak (1) + p2 strong (0) + p3 weak (0)
    assert (f.prompts, f.routed_strong, f.answered) == (4, 2, 4)
    assert (f.accuracy_routed, f.accuracy_all_strong, f.accuracy_all_weak) == (0.5, 0.75, 0.25)
    assert f.quality_vs_all_strong == pytest.approx(2 / 3)
    # the cost of these prompts is what the run paid for them: the cost report's total
    cost_report = pq.read_table(f"{config.table_uri('cost_report')}/run_date={RUN_DATE}").to_pylist()
    total = next(r for r in cost_report if r["model"] == "all")
    assert f.cost_usd == pytest.approx(float(total["cost_usd"]))
    assert f.all_strong_cost_usd == pytest.approx(float(total["baseline_all_strong_usd"]))
    assert f.all_weak_cost_usd < f.cost_usd < f.all_strong_cost_usd
    assert "routed 50.0%, all-strong 75.0%, all-weak 25.0%" in f.render()
    assert f.vs_all_strong() == "50.0% vs 75.0% correct (66.7% of all-strong quality; all-weak 25.0%) on 4 prompts"


def test_a_prompt_without_an_answer_counts_as_wrong_for_the_routed_run(tmp_path):
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps({"prompt_id": p, "strong_correct": True, "weak_correct": True}) + "\n"
                                for p in ("p0", "p1")))
    config = demo_config(tmp_path).model_copy(update={"quality": QualitySettings(known_outcomes=str(outcomes))})
    write_run(config, ["p0", "p1"], [0.9, 0.1], {"p0"}, failures={"p1": ("errored", "server_error", "boom")})

    f = quality_figures(config, RUN_DATE)
    assert (f.prompts, f.answered, f.accuracy_routed, f.accuracy_all_weak) == (2, 1, 0.5, 1.0)
    index = Path(write_run_report(config, RUN_DATE).uri)
    assert "1 of these prompts have no succeeded answer" in index.read_text()


def test_errored_expired_and_canceled_rows_are_counted_per_queue_with_their_top_error_types(tmp_path):
    config = demo_config(tmp_path)
    failures = {f"gsm8k-{i:04d}": ("errored", "rate_limited", "429: slow down") for i in range(10, 15)}
    failures |= {"gsm8k-0020": ("errored", "server_error", "500 <b>oops</b>"), "gsm8k-0021": ("canceled", None, None)}
    failures |= {"gsm8k-0030": ("expired", "batch_expired", "expired")}
    _ids, _scores, strong = demo_run(config, failures)
    index = Path(write_run_report(config, RUN_DATE).uri)

    counts, top = page_tables(index)["outcomes"]
    assert counts[0] == ["queue", "succeeded", "errored", "expired", "canceled", "total"]
    expected = {}
    for queue in ("strong", "weak"):
        rows = [p for p in _ids if (p in strong) == (queue == "strong")]
        status = [failures.get(p, ("succeeded",))[0] for p in rows]
        expected[queue] = [queue] + [str(status.count(s)) for s in ("succeeded", "errored", "expired", "canceled")] + [
            str(len(rows))]
    assert counts[1:] == [expected["strong"], expected["weak"]]
    by_type = {(r[0], r[1]): r for r in top[1:]}
    queue_of = lambda p: "strong" if p in strong else "weak"  # noqa: E731
    rate_limited = [p for p, f in failures.items() if f[1] == "rate_limited"]
    for queue in {queue_of(p) for p in rate_limited}:
        n = sum(queue_of(p) == queue for p in rate_limited)
        assert by_type[(queue, "rate_limited")][2:] == [str(n), "errored", "429: slow down"]
    assert by_type[(queue_of("gsm8k-0021"), "(no error type)")][2:4] == ["1", "canceled"]
    # provider text is escaped, never markup
    assert "500 &lt;b&gt;oops&lt;/b&gt;" in index.read_text() and "<b>oops</b>" not in index.read_text()


def test_report_without_known_outcomes_says_so_and_drops_an_older_quality_picture(tmp_path):
    config = demo_config(tmp_path)
    demo_run(config)
    folder = Path(report_uri(config, RUN_DATE))
    write_run_report(config, RUN_DATE)
    assert (folder / "quality.png").exists()

    plain = demo_config(tmp_path, known_outcomes=False)
    result = write_run_report(plain, RUN_DATE)
    assert result.quality is None and quality_figures(plain, RUN_DATE) is None
    assert not (folder / "quality.png").exists()
    assert "Quality is not known for this run" in (folder / "index.html").read_text()


@needs_chromium
def test_report_renders_with_no_row_in_the_strong_queue(tmp_path):
    config = demo_config(tmp_path)
    ids = [f"gsm8k-{i:04d}" for i in range(20)]
    write_run(config, ids, np.linspace(0.0, 0.4, len(ids)), strong_ids=set())
    index = Path(write_run_report(config, RUN_DATE).uri)

    tables = page_tables(index)
    assert tables["outcomes"][0][1] == ["strong", "0", "0", "0", "0", "0"]
    assert [r[:2] for r in tables["cost"][0][1:]] == [["claude-haiku-4-5", "weak"], ["all", "all"]]
    assert tables["quality"][0][1][3] == "0 (0.0%)"  # routed: nothing went strong
    assert_renders_in_browser(index, tmp_path)


def test_report_renders_before_any_table_or_row_exists(tmp_path):
    config = demo_config(tmp_path)
    empty_routed = Path(config.table_uri("routed")) / f"run_date={RUN_DATE}"
    empty_routed.mkdir(parents=True)
    (empty_routed / "_SUCCESS").touch()  # what Spark leaves for an empty partition
    result = write_run_report(config, RUN_DATE)

    page = Path(result.uri).read_text()
    assert result.files == (result.uri,) and result.quality.prompts == 0
    for missing in ("No cost_report table", "No responses table", "No routed prompts", "No quarantine table",
                    "No batches recorded"):
        assert missing in page
    assert "No routed prompt of this run has a known outcome" in page


def test_report_stage_writes_the_run_report_beside_the_tables(tmp_path):
    config = demo_config(tmp_path)
    demo_run(config)  # ends with report.execute
    assert (Path(config.output_root) / "report" / f"run_date={RUN_DATE}" / "index.html").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prompt_id,strong_correct\np0,1\n", "missing column(s) weak_correct"),
        ("prompt_id,strong_correct,weak_correct\np0,1,0\np1,2,0\n", "row 2 (prompt_id p1): strong_correct must be"),
        ("prompt_id,strong_correct,weak_correct\np0,1,0\np0,1,1\n", "prompt_id p0 appears more than once"),
        ("prompt_id,strong_correct,weak_correct\np0,,0\n", "row 1: strong_correct is empty"),
        (None, "no such file"),
    ],
)
def test_unusable_known_outcomes_fail_with_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "outcomes.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KnownOutcomesError) as err:
        read_known_outcomes(str(path))
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_config_names_known_outcomes_by_a_table_file_and_resolves_package_paths():
    demo = load_config()
    assert Path(demo.quality.known_outcomes).name == "gsm8k_outcomes.csv"
    assert len(read_known_outcomes(demo.quality.known_outcomes)) == 200
    raw = demo.model_dump(mode="json") | {"quality": {"known_outcomes": "outcomes.txt"}}
    with pytest.raises(ValueError, match="quality.known_outcomes: expected a .csv, .parquet or .jsonl file"):
        parse_config(raw)
