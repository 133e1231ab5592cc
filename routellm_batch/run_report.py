"""The run report people read: `<output_root>/report/run_date=D/index.html` and the PNGs beside it.

One self-contained page per run date (inline CSS, no script, nothing fetched from elsewhere), built from
the run's own tables: cost by queue and model against the all-strong baselines (cost_report), the score
distribution with the threshold (routed), quality against cost when per-prompt outcomes are known
(`quality.known_outcomes`), errored / expired / canceled rows per queue with their top error types
(responses), quarantine reasons (quarantine), the batch timeline (the run ledger) and the router and
price table versions.

Entry point: `write_run_report(config, run_date)` (the report stage calls it last). `quality_figures`
gives the quality figures alone, for the end-of-run summary.

Columns are read by name and only when present, so a table that gains columns (cached tokens, failure
counts) still renders and its new columns show up in the report's tables. Every file is written whole
through pyarrow.fs (`atomic_output`): local paths and object stores alike; index.html is written last,
so it never points at a missing picture.

Light module: pyarrow, pandas, numpy, jinja2 and matplotlib (Agg canvas, imported when drawing); no
Spark, no torch.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.json as pajson
import pyarrow.parquet as pq

from routellm_batch.config import ConfigError, RunConfig
from routellm_batch.ledger import Ledger, ShardRecord, ShardState, atomic_output, filesystem_for

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "KnownOutcomesError",
    "QualityFigures",
    "RunReport",
    "quality_figures",
    "read_known_outcomes",
    "report_uri",
    "write_run_report",
]

log = logging.getLogger(__name__)

STATUSES = ("succeeded", "errored", "expired", "canceled")
KNOWN_OUTCOME_COLUMNS = ("prompt_id", "strong_correct", "weak_correct")
TOP_ERROR_TYPES = 5
TIMELINE_ROWS = 60
# Colours: strong / weak queues, and the batch states of the timeline.
STRONG_COLOUR, WEAK_COLOUR = "#c2410c", "#2563eb"
STATE_COLOURS = {
    "completed": "#16a34a", "failed": "#dc2626", "expired": "#f59e0b", "cancelled": "#6b7280", "in flight": "#60a5fa",
}


class KnownOutcomesError(ConfigError):
    """The table named by `quality.known_outcomes` cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------- reading
def report_uri(config: RunConfig, run_date: date) -> str:
    """The folder of the run date's report (index.html and its PNGs)."""
    return f"{config.table_uri('report')}/run_date={run_date.isoformat()}"


def _read_partition(config: RunConfig, table: str, run_date: date, columns: Sequence[str] | None = None,
                    skip: Sequence[str] = ()) -> pd.DataFrame | None:
    """The run date's partition of a table (Hive sub-partitions such as queue= become columns).

    `columns`: the wanted ones that exist (None = all but `skip`). None when the table has no partition.
    """
    fs, path = filesystem_for(f"{config.table_uri(table)}/run_date={run_date.isoformat()}")
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive", exclude_invalid_files=True)
    fragments = list(dataset.get_fragments())
    if not fragments:  # a partition folder with no data file (e.g. only Spark's _SUCCESS): no rows
        return pd.DataFrame(columns=list(columns or ()))
    # Files written before a column was added lack it: unify so every column present anywhere is read.
    schema = pa.unify_schemas([f.physical_schema for f in fragments] + [dataset.schema], promote_options="permissive")
    dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive", schema=schema,
                         exclude_invalid_files=True)
    names = [c for c in (columns if columns is not None else schema.names) if c in schema.names and c not in skip]
    return dataset.to_table(columns=names).to_pandas()


def _open_known_outcomes(uri: str) -> pa.Table:
    fs, path = filesystem_for(uri)
    lower = path.lower()
    if lower.endswith(".parquet"):
        return pq.read_table(path, filesystem=fs)
    with fs.open_input_stream(path) as stream:
        if lower.endswith(".csv"):
            return pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(column_types={"prompt_id": pa.string()}))
        return pajson.read_json(stream)


def read_known_outcomes(uri: str) -> pd.DataFrame:
    """The known outcomes table: prompt_id (str), strong_correct and weak_correct (floats in [0, 1]).

    Raises KnownOutcomesError with one line naming the file and the first problem (missing file or
    column, a null, a value outside [0, 1], a repeated prompt_id)."""
    where = f"quality.known_outcomes {uri}"
    try:
        table = _open_known_outcomes(uri)
    except FileNotFoundError:
        raise KnownOutcomesError(f"{where}: no such file") from None
    except (OSError, pa.ArrowInvalid) as exc:
        raise KnownOutcomesError(f"{where}: cannot read it: {str(exc).splitlines()[0]}") from None
    missing = [c for c in KNOWN_OUTCOME_COLUMNS if c not in table.column_names]
    if missing:
        raise KnownOutcomesError(
            f"{where}: missing column(s) {', '.join(missing)} (needs {', '.join(KNOWN_OUTCOME_COLUMNS)})"
        )
    frame = table.select(list(KNOWN_OUTCOME_COLUMNS)).to_pandas()
    for column in KNOWN_OUTCOME_COLUMNS:
        nulls = np.flatnonzero(frame[column].isna().to_numpy())
        if nulls.size:
            raise KnownOutcomesError(f"{where}: row {nulls[0] + 1}: {column} is empty")
    frame["prompt_id"] = frame["prompt_id"].astype(str)
    for column in ("strong_correct", "weak_correct"):
        values = pd.to_numeric(frame[column].map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v),
                               errors="coerce")
        bad = np.flatnonzero(~values.between(0.0, 1.0).to_numpy())
        if bad.size:
            raise KnownOutcomesError(
                f"{where}: row {bad[0] + 1} (prompt_id {frame['prompt_id'].iloc[bad[0]]}): {column} must be a bool "
                f"or a grade in [0, 1], got {frame[column].iloc[bad[0]]!r}"
            )
        frame[column] = values.astype(float)
    repeated = frame["prompt_id"][frame["prompt_id"].duplicated()]
    if len(repeated):
        raise KnownOutcomesError(f"{where}: prompt_id {repeated.iloc[0]} appears more than once")
    return frame


@dataclass(frozen=True)
class _RunTables:
    routed: pd.DataFrame | None
    responses: pd.DataFrame | None
    cost: pd.DataFrame | None
    quarantine: pd.DataFrame | None
    shards: list[ShardRecord]


def _load(config: RunConfig, run_date: date) -> _RunTables:
    return _RunTables(
        routed=_read_partition(config, "routed", run_date,
                               ["prompt_id", "queue", "model", "strong_win_prob", "threshold", "router", "est_input_tokens"]),
        # The answers themselves are not shown: leave the biggest column on disk.
        responses=_read_partition(config, "responses", run_date, skip=("response_text",)),
        cost=_read_partition(config, "cost_report", run_date),
        quarantine=_read_partition(config, "quarantine", run_date, ["prompt_id", "reason", "detail"]),
        shards=Ledger.for_run(config, run_date).records(),
    )


# --------------------------------------------------------------------------------------------- quality
@dataclass(frozen=True)
class QualityFigures:
    """The routed run's quality against all-strong and all-weak on the same prompts.

    `prompts`: routed prompts of the run with a known outcome for both models; accuracies are means of the
    outcomes over them (a prompt without a succeeded answer counts as wrong for the routed run). Costs (USD,
    batch prices) are the tokens each of these prompts used, priced at each model's rates, as the cost
    report's baselines are: `cost_usd` is what the run paid for them.
    """

    known_outcomes: str
    strong_model: str
    weak_model: str
    prompts: int
    routed_strong: int
    answered: int
    accuracy_routed: float
    accuracy_all_strong: float
    accuracy_all_weak: float
    cost_usd: float
    all_strong_cost_usd: float
    all_weak_cost_usd: float

    @property
    def strong_share(self) -> float:
        return self.routed_strong / self.prompts if self.prompts else math.nan

    @property
    def quality_vs_all_strong(self) -> float:
        """Routed accuracy as a share of all-strong accuracy (1.0 = as good as all-strong)."""
        return self.accuracy_routed / self.accuracy_all_strong if self.accuracy_all_strong > 0 else math.nan

    @property
    def cost_vs_all_strong(self) -> float:
        return self.cost_usd / self.all_strong_cost_usd if self.all_strong_cost_usd > 0 else math.nan

    def vs_all_strong(self) -> str:
        """The summary table's cell: routed accuracy against all-strong (and all-weak)."""
        if not self.prompts:
            return "unknown (no routed prompt has a known outcome)"
        return (
            f"{self.accuracy_routed:.1%} vs {self.accuracy_all_strong:.1%} correct ({self.quality_vs_all_strong:.1%} "
            f"of all-strong quality; all-weak {self.accuracy_all_weak:.1%}) on {self.prompts} prompts"
        )

    def render(self) -> str:
        if not self.prompts:
            return f"quality: no routed prompt has a known outcome in {self.known_outcomes}"
        return (
            f"quality on {self.prompts} prompts with known outcomes ({self.routed_strong} sent strong): "
            f"routed {self.accuracy_routed:.1%}, all-strong {self.accuracy_all_strong:.1%}, "
            f"all-weak {self.accuracy_all_weak:.1%} ({self.quality_vs_all_strong:.1%} of all-strong quality "
            f"for {self.cost_vs_all_strong:.1%} of its cost)"
        )


@dataclass(frozen=True)
class _Quality:
    figures: QualityFigures
    frame: pd.DataFrame  # one row per prompt: scores, outcomes, both models' costs


def _per_prompt_costs(config: RunConfig, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Both models' batch cost of the tokens each prompt used, priced as the cost report prices them: at the
    answering model's own rates, and at the other model's as a baseline (0 for a prompt with no billed answer)."""
    from routellm_batch.providers.pricing import USAGE_COLUMNS, TokenUsage, batch_discount, price_table_for

    prices, discount = price_table_for(config.pricing), batch_discount(config.pricing)
    strong, weak = prices.price(config.strong.model), prices.price(config.weak.model)
    costs = []
    for queue, *counts in frame[["queue", *USAGE_COLUMNS]].itertuples(index=False):
        usage = TokenUsage(*(int(c) for c in counts))
        own, other = (strong, weak) if queue == "strong" else (weak, strong)
        paid, alternative = own.cost(usage, discount=discount), other.baseline_cost(usage, discount)
        costs.append((paid, alternative) if queue == "strong" else (alternative, paid))
    pairs = np.array(costs, dtype=float).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _quality(config: RunConfig, tables: _RunTables) -> _Quality | None:
    from routellm_batch.providers.pricing import USAGE_COLUMNS

    uri = config.quality.known_outcomes
    if uri is None or tables.routed is None:
        return None
    known = read_known_outcomes(uri)
    frame = tables.routed.merge(known, on="prompt_id", how="inner")
    answers = tables.responses if tables.responses is not None else pd.DataFrame(columns=["prompt_id"])
    answers = answers.assign(**{c: None for c in ("status", *USAGE_COLUMNS) if c not in answers})
    frame = frame.merge(answers[["prompt_id", "status", *USAGE_COLUMNS]], on="prompt_id", how="left")
    succeeded = (frame["status"] == "succeeded").to_numpy()
    # Only a succeeded answer is billed; usage a table lacks (older runs) counts as none.
    billed = frame.assign(**{c: frame[c].where(succeeded, 0).fillna(0) for c in USAGE_COLUMNS})
    strong_cost, weak_cost = _per_prompt_costs(config, billed)
    to_strong = (frame["queue"] == "strong").to_numpy()
    if "pass" in answers:  # a cascade: an escalated prompt's final answer is the strong model's (pass 2)
        to_strong |= frame["prompt_id"].isin(answers.loc[answers["pass"] == 2, "prompt_id"]).to_numpy()
    frame = frame.assign(strong_cost_usd=strong_cost, weak_cost_usd=weak_cost)
    routed_correct = np.where(to_strong, frame["strong_correct"], frame["weak_correct"]) * succeeded

    def mean(values: Any) -> float:
        return float(np.mean(values)) if len(frame) else math.nan

    figures = QualityFigures(
        known_outcomes=uri,
        strong_model=config.strong.model,
        weak_model=config.weak.model,
        prompts=len(frame),
        routed_strong=int(to_strong.sum()),
        answered=int(succeeded.sum()),
        accuracy_routed=mean(routed_correct),
        accuracy_all_strong=mean(frame["strong_correct"]),
        accuracy_all_weak=mean(frame["weak_correct"]),
        cost_usd=float(np.where(to_strong, strong_cost, weak_cost).sum()),
        all_strong_cost_usd=float(strong_cost.sum()),
        all_weak_cost_usd=float(weak_cost.sum()),
    )
    return _Quality(figures, frame)


def quality_figures(config: RunConfig, run_date: date) -> QualityFigures | None:
    """The run's quality figures; None when the config names no known outcomes (or nothing was routed)."""
    if config.quality.known_outcomes is None:
        return None
    quality = _quality(config, _load(config, run_date))
    return quality.figures if quality else None


# --------------------------------------------------------------------------------------------- figures
def _png(draw: Callable[[Figure], None], size: tuple[float, float]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    # bbox "tight": legends placed beside the axes stay in the picture
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return buf.getvalue()


def _style(ax: Any) -> None:
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _cost_png(cost: pd.DataFrame) -> bytes:
    parts = cost[cost["model"] != "all"]
    total = cost[cost["model"] == "all"].iloc[0]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        left = 0.0
        for _, row in parts.iterrows():
            value = float(row["cost_usd"])
            colour = STRONG_COLOUR if row.get("queue") == "strong" else WEAK_COLOUR
            ax.barh(2, value, left=left, color=colour, label=f"{row['model']} ({row.get('queue', '?')})")
            left += value
        baselines = [("all-strong, batch", "baseline_all_strong_usd"), ("all-strong, online", "baseline_online_usd")]
        for y, (_, column) in zip((1, 0), baselines):
            if column in total:
                ax.barh(y, float(total[column]), color="#9ca3af")
        values = [left] + [float(total[c]) if c in total else math.nan for _, c in baselines]
        for y, value in zip((2, 1, 0), values):
            if not math.isnan(value):
                ax.annotate(f" ${value:,.4f}", (value, y), va="center", fontsize=9)
        ax.set_yticks([2, 1, 0], ["this run (batch)"] + [label for label, _ in baselines])
        ax.set_xlabel("USD")
        ax.set_xlim(0, max([v for v in values if not math.isnan(v)] + [1e-9]) * 1.25)
        if len(parts):
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        _style(ax)

    return _png(draw, (8, 2.8))


def _scores_png(routed: pd.DataFrame, thresholds: list[float]) -> bytes:
    scores = routed["strong_win_prob"].astype(float).to_numpy()
    # Routers often score in a narrow band: zoom on the scores and the threshold, not on [0, 1].
    lo, hi = min([scores.min(), *thresholds]), max([scores.max(), *thresholds])
    pad = max(0.02, 0.05 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    width = (hi - lo) / 40
    if len(thresholds) == 1 and lo < thresholds[0] < hi:
        # a bin edge on the threshold: no bar mixes the two queues
        lo = thresholds[0] - math.ceil((thresholds[0] - lo) / width) * width
    bins = np.arange(lo, hi + width, width)

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        data, colours, labels = [], [], []
        for queue, colour in (("weak", WEAK_COLOUR), ("strong", STRONG_COLOUR)):
            in_queue = routed.loc[routed["queue"] == queue, "strong_win_prob"].astype(float).to_numpy()
            data.append(in_queue)
            colours.append(colour)
            labels.append(f"{queue} queue ({len(in_queue):,})")
        ax.hist(data, bins=bins, stacked=True, color=colours, label=labels)
        for t in thresholds:
            ax.axvline(t, color="black", linestyle="--", linewidth=1.2)
            ax.annotate(f" threshold {t:.3f}", (t, 0.95), xycoords=("data", "axes fraction"), fontsize=9)
        ax.set_xlim(lo, hi)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("strong_win_prob (router score)")
        ax.set_ylabel("prompts")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
        _style(ax)

    return _png(draw, (8, 3.2))


def _quality_png(quality: _Quality, thresholds: list[float]) -> bytes:
    from routellm_batch.evaluation import PairedOutcomes, apgr, routing_curve

    frame, f = quality.frame, quality.figures
    outcomes = PairedOutcomes(
        prompts=tuple(frame["prompt_id"]), strong=frame["strong_correct"].to_numpy(),
        weak=frame["weak_correct"].to_numpy(), strong_model=f.strong_model, weak_model=f.weak_model,
        strong_cost_usd=frame["strong_cost_usd"].to_numpy(), weak_cost_usd=frame["weak_cost_usd"].to_numpy(),
    )
    curves = {"this run's router": routing_curve(frame["strong_win_prob"].astype(float).to_numpy(), outcomes)}
    # Baselines on the same prompts: random (all tied = its exact expectation), length, oracle.
    curves["random"] = routing_curve(np.zeros(len(frame)), outcomes)
    if "est_input_tokens" in frame:
        curves["length"] = routing_curve(frame["est_input_tokens"].astype(float).to_numpy(), outcomes)
    curves["oracle"] = routing_curve(outcomes.strong - outcomes.weak, outcomes)
    threshold = ", ".join(f"{t:.3f}" for t in thresholds)
    styles = {
        "this run's router": {"linewidth": 2.2, "color": STRONG_COLOUR},
        "random": {"linewidth": 1, "linestyle": "--", "color": "#6b7280"},
        "length": {"linewidth": 1, "linestyle": "--", "color": "#7c3aed"},
        "oracle": {"linewidth": 1, "linestyle": "--", "color": "#16a34a"},
    }

    def draw(fig: Figure) -> None:
        by_share, by_cost = fig.subplots(1, 2)
        for name, curve in curves.items():
            style = styles[name]
            label = f"{name} (APGR {apgr(curve):.2f})" if not np.isnan(curve.pgr).any() else name
            by_share.plot(100 * curve.share, 100 * curve.quality, label=label, **style)
            by_cost.plot(curve.cost_usd, 100 * curve.quality, **style)
        run_label = f"this run (threshold {threshold})"
        by_share.plot(100 * f.strong_share, 100 * f.accuracy_routed, "*", color="black", markersize=14, label=run_label)
        by_cost.plot(f.cost_usd, 100 * f.accuracy_routed, "*", color="black", markersize=14)
        # all-weak below-right of its end (the curves leave it upwards), all-strong above-right of its end
        for x, acc, name, offset in ((f.all_weak_cost_usd, f.accuracy_all_weak, "all-weak", (8, -10)),
                                     (f.all_strong_cost_usd, f.accuracy_all_strong, "all-strong", (4, 4))):
            by_cost.annotate(name, (x, 100 * acc), textcoords="offset points", xytext=offset, fontsize=8)
        by_share.set_xlabel("prompts sent to the strong model (%)")
        by_cost.set_xlabel("batch cost of these prompts (USD)")
        for ax in (by_share, by_cost):
            ax.set_ylabel("accuracy (%)")
            _style(ax)
        by_share.legend(fontsize=8, frameon=False, loc="lower right")

    return _png(draw, (11, 4.2))


def _timeline_png(shards: list[dict[str, Any]]) -> bytes:
    shown = shards[:TIMELINE_ROWS]
    t0 = min(s["start"] for s in shown)
    span = max((s["collected"] or s["end"] or s["updated"]) - t0 for s in shown).total_seconds()
    # A demo's batches end in seconds, a real night's in hours: pick the unit that reads.
    unit, per = ("seconds", 1.0) if span < 120 else ("minutes", 60.0) if span < 3 * 3600 else ("hours", 3600.0)

    def at(t: datetime | None) -> float:
        return (t - t0).total_seconds() / per if t is not None else math.nan

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        for y, s in enumerate(shown):
            start, end = at(s["start"]), at(s["end"] or s["updated"])
            colour = STATE_COLOURS.get(s["outcome"], STATE_COLOURS["in flight"])
            ax.barh(y, max(end - start, 1e-3), left=start, color=colour, hatch="//" if s["attempt"] > 1 else None,
                    edgecolor="white")
            if s["collected"] is not None:
                ax.plot(at(s["collected"]), y, "|", color="black", markersize=10)
        ax.set_yticks(range(len(shown)), [s["label"] for s in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{unit} since the first batch was submitted")
        from matplotlib.patches import Patch

        legend = [Patch(color=c, label=k) for k, c in STATE_COLOURS.items() if any(s["outcome"] == k for s in shown)]
        if any(s["attempt"] > 1 for s in shown):
            legend.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="retry attempt"))
        ax.legend(handles=legend, fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        _style(ax)

    return _png(draw, (8, min(1.4 + 0.32 * len(shown), 14)))


# --------------------------------------------------------------------------------------------- sections
def _first(record: ShardRecord, states: Sequence[ShardState]) -> tuple[datetime, ShardState] | None:
    for t in record.history:
        if t.state in states:
            return t.at, t.state
    return None


def _shard_rows(shards: list[ShardRecord]) -> list[dict[str, Any]]:
    terminal = [s for s in ShardState if s.batch_terminal]
    rows = []
    for r in shards:
        submitted = _first(r, [ShardState.SUBMITTED])
        ended = _first(r, terminal)
        collected = _first(r, [ShardState.COLLECTED])
        intent = _first(r, [ShardState.SUBMITTING])
        start = (intent or submitted or (r.created_at, None))[0]
        rows.append({
            "label": f"{r.queue} a{r.attempt} #{r.index}",
            "queue": r.queue, "attempt": r.attempt, "batch_id": r.batch_id,
            "rows": r.row_count, "state": r.state.value, "start": start,
            "submitted": submitted[0] if submitted else None,
            "end": ended[0] if ended else None,
            "outcome": ended[1].value if ended else "in flight",
            "collected": collected[0] if collected else None,
            "updated": r.updated_at,
            # a shard sent back to planned (a lost create, a batch that was not ours) was submitted again
            "replans": sum(1 for t in r.history[1:] if t.state is ShardState.PLANNED),
            "error": r.error or "",
        })
    return sorted(rows, key=lambda s: (s["start"], s["attempt"], s["label"]))


def _failure_sections(responses: pd.DataFrame) -> dict[str, Any]:
    counts = responses.groupby(["queue", "status"]).size().unstack(fill_value=0) if len(responses) else pd.DataFrame()
    statuses = list(STATUSES) + sorted(set(counts.columns) - set(STATUSES))
    per_queue = []
    for queue in ("strong", "weak"):
        row = counts.loc[queue] if queue in counts.index else pd.Series(dtype="int64")
        per_queue.append({"queue": queue, **{s: int(row.get(s, 0)) for s in statuses}, "total": int(row.sum())})
    failed = responses[responses["status"] != "succeeded"] if len(responses) else responses
    top = []
    if len(failed):
        failed = failed.assign(
            error_type=failed["error_type"].fillna("(no error type)") if "error_type" in failed else "(no error type)",
            error_message=failed["error_message"].fillna("") if "error_message" in failed else "",
        )
        for (queue, error_type), group in failed.groupby(["queue", "error_type"]):
            top.append({"queue": queue, "error_type": error_type, "count": len(group),
                        "statuses": ", ".join(sorted(group["status"].unique())),
                        "example": _clip(group["error_message"].iloc[0], 200)})
        top.sort(key=lambda t: (t["queue"], -t["count"], t["error_type"]))
        top = [t for queue in ("strong", "weak") for t in [x for x in top if x["queue"] == queue][:TOP_ERROR_TYPES]]
    return {"statuses": statuses, "per_queue": per_queue, "top_errors": top}


def _quarantine_reasons(quarantine: pd.DataFrame | None) -> list[dict[str, Any]]:
    reasons = []
    if quarantine is not None and len(quarantine):
        for reason, group in quarantine.groupby("reason"):
            example = f"{group['prompt_id'].iloc[0] or '(no id)'}: {_clip(group['detail'].iloc[0], 160)}"
            reasons.append({"reason": reason, "count": len(group), "example": example})
    return sorted(reasons, key=lambda r: (-r["count"], r["reason"]))


def _clip(text: Any, n: int) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


# Shown first, money before tokens; any other column the table gains (more token kinds) follows them,
# and a narrow window scrolls those.
_COST_COLUMNS = ("model", "queue", "requests", "cost_usd", "baseline_all_strong_usd", "baseline_online_usd",
                 "savings_usd", "input_tokens", "output_tokens")
_COST_HIDDEN = {"run_id", "run_date", "price_table_version", "provider"}


def _cost_table(cost: pd.DataFrame) -> dict[str, Any]:
    columns = [c for c in _COST_COLUMNS if c in cost] + [
        c for c in cost.columns if c not in _COST_COLUMNS and c not in _COST_HIDDEN
    ]
    order = cost.assign(_all=cost["model"] == "all").sort_values(["_all", "queue", "model"], kind="stable")
    return {"columns": columns, "rows": [{c: row[c] for c in columns} for _, row in order.iterrows()]}


def _headline(tables: _RunTables, quality: _Quality | None) -> list[dict[str, str]]:
    cards = []
    if tables.routed is not None:
        n = len(tables.routed)
        strong = int((tables.routed["queue"] == "strong").sum())
        cards.append({"label": "prompts routed", "value": f"{n:,}", "note": f"{strong:,} strong ({_pct(strong, n)})"})
    if tables.quarantine is not None:
        cards.append({"label": "quarantined", "value": f"{len(tables.quarantine):,}", "note": "bad input rows"})
    if tables.cost is not None and (tables.cost["model"] == "all").any():
        total = tables.cost[tables.cost["model"] == "all"].iloc[0]
        cost = Decimal(total["cost_usd"])
        cards.append({"label": "cost (batch)", "value": _usd(cost), "note": "from reported tokens"})
        if "baseline_all_strong_usd" in total:
            base = Decimal(total["baseline_all_strong_usd"])
            cards.append({"label": "vs all-strong batch", "value": _usd(base),
                          "note": f"saved {_pct(base - cost, base)}"})
        if "baseline_online_usd" in total:
            online = Decimal(total["baseline_online_usd"])
            cards.append({"label": "vs all-strong online", "value": _usd(online),
                          "note": f"saved {_pct(online - cost, online)}"})
        if "dedupe_requests" in total and total["dedupe_requests"] + total["cache_requests"]:
            avoided = Decimal(total["dedupe_avoided_usd"]) + Decimal(total["cache_avoided_usd"])
            cards.append({"label": "served without a request", "value": f"{total['dedupe_requests'] + total['cache_requests']:,}",
                          "note": f"{total['dedupe_requests']:,} by dedupe, {total['cache_requests']:,} from the answer "
                                  f"cache; {_usd(avoided)} avoided"})  # fmt: skip
    if quality is not None and quality.figures.prompts:
        f = quality.figures
        cards.append({"label": "accuracy (routed)", "value": f"{f.accuracy_routed:.1%}",
                      "note": f"all-strong {f.accuracy_all_strong:.1%}, all-weak {f.accuracy_all_weak:.1%}"})
    return cards


def _pct(part: Any, whole: Any) -> str:
    return f"{float(part) / float(whole):.1%}" if whole else "n/a"


def _usd(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    value = float(value)
    # Small runs cost fractions of a cent: show 4 decimals below a dollar.
    return f"${value:,.4f}" if abs(value) < 1 else f"${value:,.2f}"


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column.endswith("_usd"):
        return _usd(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return str(value)


def _unique(frame: pd.DataFrame | None, column: str) -> list[Any]:
    if frame is None or column not in frame:
        return []
    return sorted(frame[column].dropna().unique().tolist())


def _policy(config: RunConfig) -> str:
    settings = config.threshold.model_dump()
    policy = settings.pop("policy")
    return f"{policy} ({', '.join(f'{k} {v}' for k, v in settings.items())})"


def _header(column: str) -> str:
    # Money cells carry their $ sign: "cost_usd" reads as "cost"; spaces let long names wrap.
    return column.removesuffix("_usd").replace("_", " ")


def _time(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).strftime("%H:%M:%S") if t is not None else ""


# --------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class RunReport:
    uri: str
    """The report's index.html."""
    files: tuple[str, ...]
    """Every file written (index.html last)."""
    quality: QualityFigures | None


def _template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("routellm_batch", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(usd=_usd, cell=_cell, time=_time, clip=_clip, header=_header)
    return env.get_template("run_report.html.j2")


def write_run_report(config: RunConfig, run_date: date) -> RunReport:
    """Write the run date's report (index.html + PNGs) under `<output_root>/report/`; returns where."""
    tables = _load(config, run_date)
    quality = _quality(config, tables)
    thresholds = [float(t) for t in _unique(tables.routed, "threshold")]
    shards = _shard_rows(tables.shards)
    pictures: dict[str, bytes] = {}
    if tables.cost is not None and (tables.cost["model"] == "all").any():
        pictures["cost.png"] = _cost_png(tables.cost)
    if tables.routed is not None and len(tables.routed):
        pictures["scores.png"] = _scores_png(tables.routed, thresholds)
    if quality is not None and quality.figures.prompts:
        pictures["quality.png"] = _quality_png(quality, thresholds)
    if shards:
        pictures["timeline.png"] = _timeline_png(shards)
    html = _template().render(
        run_id=config.run_id(run_date),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        config=config,
        tables=tables,
        cards=_headline(tables, quality),
        cost=_cost_table(tables.cost) if tables.cost is not None else None,
        failures=_failure_sections(tables.responses) if tables.responses is not None else None,
        quality=quality.figures if quality else None,
        reasons=_quarantine_reasons(tables.quarantine),
        shards=shards[:TIMELINE_ROWS],
        more_shards=max(0, len(shards) - TIMELINE_ROWS),
        retried=sum(1 for s in shards if s["attempt"] > 1 or s["replans"]),
        thresholds=thresholds,
        routers=_unique(tables.routed, "router"),
        policy=_policy(config),
        price_versions=_unique(tables.cost, "price_table_version"),
        pictures=pictures,
    )
    base = report_uri(config, run_date)
    fs, path = filesystem_for(base)
    written = []
    for name, data in [*pictures.items(), ("index.html", html.encode("utf-8"))]:
        with atomic_output(fs, f"{path}/{name}") as out:
            out.write(data)
        written.append(f"{base}/{name}")
    # A picture an earlier report of this date had and this one has not (e.g. quality) is removed.
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.base_name.endswith(".png") and info.base_name not in pictures:
            fs.delete_file(info.path)
    log.info("run report for %s written to %s/index.html", config.run_id(run_date), base)
    return RunReport(uri=f"{base}/index.html", files=tuple(written), quality=quality.figures if quality else None)
