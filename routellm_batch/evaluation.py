"""Offline routing quality: PGR curves, APGR, CPT, cost in USD, baselines, plots; `routellm-batch evaluate`.

Definitions (shared/docs/routing-quality.md). A router scores every prompt; routing the top share x of
the scores to the strong model and the rest to the weak one gives a quality q(x) (mean outcome: accuracy
for bool outcomes, mean grade for graded ones) and a cost. PGR(x) = (q(x) - q_weak) / (q_strong - q_weak).

How the curve is computed, exactly and deterministically:
- The curve is evaluated at every k/n (k prompts of n routed strong) and is linear in between, which is
  the exact expected quality when the next prompt in line goes strong with probability t.
- Tied scores: a group of prompts with equal scores is cut at the threshold in expectation, i.e. every
  prompt of the group counts with the group's mean gain (strong - weak outcome) and mean cost delta. That
  is the expected curve over all orders inside the group: independent of input order, no hash or seed,
  and a constant-score router gives PGR(x) = x exactly (APGR 0.5).
- APGR is the exact area under that piecewise-linear curve on [0, 1] (trapezoids on the k/n grid).
  PGR is not capped: the oracle's curve exceeds 1 when the weak model wins some prompts.
- CPT(p) is the smallest share x with PGR(x) >= p on that curve (interpolated between grid points).
- "95% of all-strong": the smallest share (and USD) whose quality reaches 0.95 * q_strong.
- Out-of-fold scores come from K different models whose scales differ (a ridge's intercept is its
  training folds' mean gain, so a held-out fold with a low mean gets high scores: pooled raw, folds
  would be ranked against each other in reverse). `evaluate_scores(..., folds=ids)` therefore ranks
  every score within its fold first (`within_fold_ranks`), the routers' and the baselines' alike:
  the top share x of the pooled ranks is about the top x of each fold, i.e. the folds are evaluated
  at the same share and pooled, which is what one deployed model would do.

CLI: `routellm-batch evaluate --outcomes T --router SPEC [--folds K] [--prices FILE] [--out DIR]`; with
--folds every figure is out-of-fold (trained on K-1 folds split by prompt, scored on the held-out one).

Light module: numpy and pandas only; matplotlib is imported inside `plot_curves` (Agg backend), torch
only through the routers that the CLI trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BASELINE_KINDS",
    "EvaluateError",
    "Evaluation",
    "PairedOutcomes",
    "RouterFigures",
    "RoutingCurve",
    "add_arguments",
    "apgr",
    "baseline_scores",
    "cpt",
    "estimate_input_tokens",
    "estimate_tokens",
    "evaluate_scores",
    "evaluation_embedder",
    "fold_ids",
    "format_table",
    "load_outcomes_table",
    "load_price_table",
    "mean_curve",
    "out_of_fold_scores",
    "outcome_models",
    "paired_outcomes",
    "parse_options",
    "plot_curves",
    "routing_curve",
    "run",
    "share_at_quality",
    "train_for_evaluation",
    "training_battles",
    "within_fold_ranks",
    "write_report",
]

log = logging.getLogger(__name__)

#: Router kinds that need no training: scored directly, the same in every fold.
BASELINE_KINDS = ("random", "length")
#: Seeds of the random baseline; its curve is the mean over them.
RANDOM_SEEDS = tuple(range(10))


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class PairedOutcomes:
    """Per prompt: the strong and the weak model's outcome (bool -> 0/1, or a graded score).

    `strong_cost_usd` / `weak_cost_usd` (optional) are what answering each prompt costs with each model.
    """

    prompts: tuple[str, ...]
    strong: np.ndarray
    weak: np.ndarray
    strong_model: str = "strong"
    weak_model: str = "weak"
    strong_cost_usd: np.ndarray | None = None
    weak_cost_usd: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if n == 0:
            raise ValueError("no prompts with outcomes for both the strong and the weak model")
        for name in ("strong", "weak", "strong_cost_usd", "weak_cost_usd"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"{name}: expected {n} values (one per prompt), got shape {arr.shape}")
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise ValueError(f"{name}: non-finite value for prompt #{bad[0]} ({self.prompts[bad[0]][:60]!r})")
            object.__setattr__(self, name, arr)
        if (self.strong_cost_usd is None) != (self.weak_cost_usd is None):
            raise ValueError("give both strong_cost_usd and weak_cost_usd, or neither")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def has_costs(self) -> bool:
        return self.strong_cost_usd is not None

    def subset(self, index: np.ndarray) -> PairedOutcomes:
        index = np.asarray(index)
        return PairedOutcomes(
            prompts=tuple(self.prompts[i] for i in index),
            strong=self.strong[index],
            weak=self.weak[index],
            strong_model=self.strong_model,
            weak_model=self.weak_model,
            strong_cost_usd=None if self.strong_cost_usd is None else self.strong_cost_usd[index],
            weak_cost_usd=None if self.weak_cost_usd is None else self.weak_cost_usd[index],
        )


# --------------------------------------------------------------------------------------------- curves
@dataclass(frozen=True)
class RoutingCurve:
    """Quality (and cost) when the top k of n prompts by score go strong, k = 0..n (share = k/n)."""

    share: np.ndarray
    quality: np.ndarray
    pgr: np.ndarray
    cost_usd: np.ndarray | None = None

    @property
    def quality_weak(self) -> float:
        return float(self.quality[0])

    @property
    def quality_strong(self) -> float:
        return float(self.quality[-1])


def _pgr(quality: np.ndarray) -> np.ndarray:
    gap = quality[-1] - quality[0]
    if not gap > 0:
        # PGR needs the strong model to be better on these prompts; a tiny fold can lack that.
        return np.full_like(quality, np.nan)
    return (quality - quality[0]) / gap


def routing_curve(scores: np.ndarray, outcomes: PairedOutcomes) -> RoutingCurve:
    """The curve for one router's scores (higher = more likely to need the strong model); ties averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(outcomes)
    if scores.shape != (n,):
        raise ValueError(f"scores: expected {n} values (one per prompt), got shape {scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"scores: non-finite score for prompt #{bad[0]} ({outcomes.prompts[bad[0]][:60]!r})")
    # groups of equal scores, highest score first (np.unique sorts ascending, hence the minus)
    _, group = np.unique(-scores, return_inverse=True)
    counts = np.bincount(group)

    def cumulative(delta: np.ndarray) -> np.ndarray:
        group_mean = np.bincount(group, weights=delta) / counts
        per_position = np.repeat(group_mean, counts)  # positions in routing order
        return np.concatenate([[0.0], np.cumsum(per_position)])

    quality = (outcomes.weak.sum() + cumulative(outcomes.strong - outcomes.weak)) / n
    cost = None
    if outcomes.has_costs:
        cost = outcomes.weak_cost_usd.sum() + cumulative(outcomes.strong_cost_usd - outcomes.weak_cost_usd)
    share = np.arange(n + 1, dtype=np.float64) / n
    return RoutingCurve(share=share, quality=quality, pgr=_pgr(quality), cost_usd=cost)


def mean_curve(curves: Sequence[RoutingCurve]) -> RoutingCurve:
    """Pointwise mean of curves over the same prompts (the random baseline over several seeds)."""
    if not curves:
        raise ValueError("mean_curve: no curves")
    quality = np.mean([c.quality for c in curves], axis=0)
    cost = None if curves[0].cost_usd is None else np.mean([c.cost_usd for c in curves], axis=0)
    return RoutingCurve(share=curves[0].share, quality=quality, pgr=_pgr(quality), cost_usd=cost)


def apgr(curve: RoutingCurve) -> float:
    """Area under PGR over the strong-call share in [0, 1] (exact for the piecewise-linear curve)."""
    y, x = curve.pgr, curve.share
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def _first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest x where the piecewise-linear y(x) reaches target (NaN when it never does)."""
    if np.isnan(y).any() or math.isnan(target):
        return math.nan
    hit = np.flatnonzero(y >= target - 1e-12)
    if hit.size == 0:
        return math.nan
    k = int(hit[0])
    if k == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    return float(x0 + (x1 - x0) * (target - y0) / (y1 - y0))


def cpt(curve: RoutingCurve, p: float) -> float:
    """Call-performance threshold: the smallest strong-call share with PGR >= p."""
    return _first_crossing(curve.share, curve.pgr, p)


def share_at_quality(curve: RoutingCurve, target_quality: float) -> float:
    """The smallest strong-call share whose quality reaches `target_quality`."""
    return _first_crossing(curve.share, curve.quality, target_quality)


def _cost_at_share(curve: RoutingCurve, share: float) -> float:
    if curve.cost_usd is None or math.isnan(share):
        return math.nan
    return float(np.interp(share, curve.share, curve.cost_usd))


# --------------------------------------------------------------------------------------------- figures
@dataclass(frozen=True)
class RouterFigures:
    """One router's figures on one set of prompts (shares in [0, 1]; NaN where undefined)."""

    router: str
    apgr: float
    cpt50: float
    cpt80: float
    share_at_95pct_strong_quality: float
    usd_at_95pct_strong_quality: float
    quality_weak: float
    quality_strong: float
    usd_all_weak: float
    usd_all_strong: float
    prompts: int

    @classmethod
    def from_curve(cls, router: str, curve: RoutingCurve) -> RouterFigures:
        share95 = share_at_quality(curve, 0.95 * curve.quality_strong)
        return cls(
            router=router,
            apgr=apgr(curve),
            cpt50=cpt(curve, 0.5),
            cpt80=cpt(curve, 0.8),
            share_at_95pct_strong_quality=share95,
            usd_at_95pct_strong_quality=_cost_at_share(curve, share95),
            quality_weak=curve.quality_weak,
            quality_strong=curve.quality_strong,
            usd_all_weak=math.nan if curve.cost_usd is None else float(curve.cost_usd[0]),
            usd_all_strong=math.nan if curve.cost_usd is None else float(curve.cost_usd[-1]),
            prompts=len(curve.share) - 1,
        )


@dataclass(frozen=True)
class Evaluation:
    """Routers and baselines on the same prompts: their curves and figures (router rows first)."""

    outcomes: PairedOutcomes
    curves: dict[str, RoutingCurve]
    figures: list[RouterFigures]
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(f) for f in self.figures])


def baseline_scores(prompts: Sequence[str], outcomes: PairedOutcomes | None = None,
                    random_seeds: Sequence[int] = RANDOM_SEEDS) -> dict[str, list[np.ndarray]]:
    """Scores of the baselines: random (one array per seed), length and, with outcomes, the oracle."""
    from routellm_batch.routers.length import LengthRouter
    from routellm_batch.routers.random_router import RandomRouter

    out: dict[str, list[np.ndarray]] = {
        "random": [RandomRouter(seed).score(prompts) for seed in random_seeds],
        "length": [LengthRouter().score(prompts)],
    }
    if outcomes is not None:
        # the oracle knows each prompt's gain; equal gains are tied groups (averaged, see module doc)
        out["oracle"] = [outcomes.strong - outcomes.weak]
    return out


def within_fold_ranks(scores: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each score replaced by its rank quantile inside its fold, (rank + 0.5) / fold size; ties share
    their mean rank, so a fold scored by a constant stays one tie (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    folds = np.asarray(folds)
    if scores.shape != folds.shape:
        raise ValueError(f"within_fold_ranks: {scores.shape[0]} scores but {folds.shape[0]} fold ids")
    out = np.empty_like(scores)
    for k in np.unique(folds):
        member = np.flatnonzero(folds == k)
        values, group, counts = np.unique(scores[member], return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # rank of each group's first member
        out[member] = (first + (counts - 1) / 2.0)[group] / member.size + 0.5 / member.size
    return out


def evaluate_scores(outcomes: PairedOutcomes, router_scores: Mapping[str, np.ndarray],
                    random_seeds: Sequence[int] = RANDOM_SEEDS, folds: np.ndarray | None = None) -> Evaluation:
    """Figures of each router's scores and of the baselines (random mean, length, oracle) on the same prompts.

    `folds` (fold id per prompt) when the router scores are out-of-fold: every score, baselines included,
    is ranked within its fold first (`within_fold_ranks`).
    """

    def curve(scores: np.ndarray) -> RoutingCurve:
        return routing_curve(scores if folds is None else within_fold_ranks(scores, folds), outcomes)

    curves: dict[str, RoutingCurve] = {}
    for name, scores in router_scores.items():
        curves[name] = curve(scores)
    for name, score_sets in baseline_scores(outcomes.prompts, outcomes, random_seeds).items():
        label = f"{name} (mean of {len(score_sets)} seeds)" if name == "random" else name
        if label in curves:
            continue
        curves[label] = mean_curve([curve(s) for s in score_sets])
    figures = [RouterFigures.from_curve(name, curve) for name, curve in curves.items()]
    notes = []
    if not outcomes.strong.mean() > outcomes.weak.mean():
        notes.append(
            f"the strong model ({outcomes.strong_model}) is not better than the weak one "
            f"({outcomes.weak_model}) on these prompts: PGR, APGR and CPT are undefined (NaN)"
        )
    return Evaluation(outcomes=outcomes, curves=curves, figures=figures, notes=notes)


# --------------------------------------------------------------------------------------------- folds
def fold_ids(prompts: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..folds-1) of each prompt: a seeded permutation of the distinct prompts, dealt round-robin.

    A prompt that appears twice gets one fold, so train and held-out prompts are always disjoint;
    the result depends on the set of prompts and the seed, not on their order.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    distinct = sorted(set(prompts))
    if len(distinct) < folds:
        raise ValueError(f"{len(distinct)} distinct prompts cannot fill {folds} folds")
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[i]: pos % folds for pos, i in enumerate(order)}
    return np.fromiter((fold_of[p] for p in prompts), dtype=np.int64, count=len(prompts))


def out_of_fold_scores(outcomes: PairedOutcomes, fit_and_score: Callable[[PairedOutcomes, Sequence[str]], np.ndarray],
                       folds: int, seed: int = 0) -> np.ndarray:
    """Scores where each prompt is scored by a router fitted on the other folds only.

    `fit_and_score(train_outcomes, held_out_prompts)` trains on `train_outcomes` and returns the scores
    of `held_out_prompts`; nothing of the held-out fold reaches it but the prompt texts to score.
    """
    ids = fold_ids(outcomes.prompts, folds, seed)
    scores = np.full(len(outcomes), np.nan)
    for k in range(folds):
        held_out = np.flatnonzero(ids == k)
        train = outcomes.subset(np.flatnonzero(ids != k))
        fold_scores = np.asarray(fit_and_score(train, [outcomes.prompts[i] for i in held_out]), dtype=np.float64)
        if fold_scores.shape != (held_out.size,):
            raise ValueError(f"fold {k}: the router returned {fold_scores.shape} scores for {held_out.size} prompts")
        scores[held_out] = fold_scores
        log.info("fold %d/%d: trained on %d prompts, scored %d", k + 1, folds, len(train), held_out.size)
    return scores


# --------------------------------------------------------------------------------------------- tables
def estimate_tokens(texts: Sequence[str] | pd.Series) -> np.ndarray:
    """Token estimates where the table carries no counts: the project's rule (providers.pricing)."""
    from routellm_batch.providers.pricing import estimate_tokens as estimate

    return np.fromiter((estimate(t if isinstance(t, str) else None) for t in texts), dtype=np.float64)


def estimate_input_tokens(prompts: Sequence[str]) -> np.ndarray:
    """Input tokens of a one-message request per prompt, as the split stage estimates them."""
    from routellm_batch.providers.pricing import estimate_request_tokens

    return np.fromiter((estimate_request_tokens(prompt=p) for p in prompts), dtype=np.float64)


def load_price_table(path: str | Path) -> dict[str, tuple[float, float]]:
    """model -> (input, output) USD per million tokens (online list price), from YAML or JSON.

    Two layouts: the project's versioned price table (providers/prices.yaml: `version`, `models`
    name -> {input, output}, `aliases`; read by providers.pricing, aliases included), or a mapping
    model -> {input_price, output_price} (LLMRouter's models.json; an entry's `model` field is a
    second name for it).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"price table {path} does not exist")
    text = path.read_text()
    raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if isinstance(raw, dict) and "version" in raw and isinstance(raw.get("models"), dict):
        from routellm_batch.providers.pricing import load_price_table as load_versioned

        table = load_versioned(path)
        prices = {name: (float(p.input_per_mtok), float(p.output_per_mtok)) for name, p in table.models.items()}
        prices.update({alias: prices[target] for alias, target in table.aliases.items()})
        return prices
    if not isinstance(raw, dict):
        raise ValueError(f"price table {path}: expected a mapping model -> prices")
    prices = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise ValueError(f"price table {path}: entry {name!r} is not a mapping")
        try:
            pair = (float(entry.get("input_price", entry.get("input"))),
                    float(entry.get("output_price", entry.get("output"))))
        except (TypeError, ValueError):
            raise ValueError(
                f"price table {path}: entry {name!r} needs numeric input_price and output_price (USD per 1M tokens)"
            ) from None
        if min(pair) < 0 or not all(map(math.isfinite, pair)):
            raise ValueError(f"price table {path}: entry {name!r} needs finite prices >= 0")
        prices[str(name)] = pair
        if isinstance(entry.get("model"), str):
            prices.setdefault(entry["model"], pair)
    return prices


#: Optional per-prompt / per-model columns of an outcomes table besides the model score columns.
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS_SUFFIX = "_output_tokens"
RESPONSE_SUFFIX = "_response"


def _routellm_contaminated(csv_file: Path) -> set[str]:
    """RouteLLM's contaminated prompts beside an eval CSV (gsm8k/ or mmlu/ for mmlu/responses/*.csv)."""
    for folder in (csv_file.parent, csv_file.parent.parent):
        f = folder / "contaminated_prompts.jsonl"
        if f.is_file():
            with open(f) as handle:
                return {json.loads(line)["eval_prompt"] for line in handle if line.strip()}
    return set()


def _long_to_wide(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """prompt, model, score (+ input_tokens, output_tokens, response) -> one row per prompt, a column per model.

    Repeated (prompt, model) rows are averaged.
    """
    table = table.copy()
    raw = table["score"]
    as_float = raw.map(lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v)  # mixed bool/float columns
    score = pd.to_numeric(as_float, errors="coerce")
    bad = np.flatnonzero((score.isna() & raw.notna()).to_numpy())
    if bad.size:
        raise ValueError(
            f"outcomes table {source}: row {bad[0]} has a non-numeric score {table['score'].iloc[bad[0]]!r}"
        )
    table["score"] = score.astype(np.float64)
    table["model"] = table["model"].astype(str)
    wide = table.pivot_table(index="prompt", columns="model", values="score", aggfunc="mean", sort=False)
    wide.columns = [str(c) for c in wide.columns]
    extra = {}
    if "output_tokens" in table.columns:
        out = table.pivot_table(index="prompt", columns="model", values="output_tokens", aggfunc="mean", sort=False)
        extra.update({f"{m}{OUTPUT_TOKENS_SUFFIX}": out[m] for m in out.columns})
    if "response" in table.columns:
        resp = table.dropna(subset=["response"]).groupby(["prompt", "model"], sort=False)["response"].first().unstack()
        extra.update({f"{m}{RESPONSE_SUFFIX}": resp[m] for m in resp.columns})
    if INPUT_TOKENS in table.columns:
        extra[INPUT_TOKENS] = table.groupby("prompt", sort=False)[INPUT_TOKENS].mean()
    for name, column in extra.items():
        wide[name] = column.reindex(wide.index)
    return wide.reset_index()


def load_outcomes_table(source: str | Path) -> pd.DataFrame:
    """An outcomes table in the project's wide shape (routers.data): `prompt` and one score column per model.

    `source` is a shared data set name (mmlu, gsm8k, llmrouter); a RouteLLM eval folder (gsm8k/, mmlu/
    or mmlu/responses/) or CSV file, with RouteLLM's contaminated prompts dropped; LLMRouter's
    train.json; a wide table (prompt + model columns); or a long table with columns prompt, model,
    score. Optional columns: `input_tokens`, `<model>_output_tokens`, `<model>_response` (wide) or
    `input_tokens`, `output_tokens`, `response` (long).
    """
    from routellm_batch.routers import data

    name = str(source)
    if name in ("mmlu", "gsm8k", "llmrouter"):
        return data.load_outcomes(name)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"outcomes table {path} does not exist")
    if path.is_dir() and (path / "gsm8k_responses.csv").is_file():
        return data.load_routellm_outcomes("gsm8k", path.parent)
    if path.is_dir() and path.name == "responses" and any(path.glob("mmlu_*.csv")):
        path = path.parent
    if path.is_dir() and (path / "responses").is_dir():
        return data.load_routellm_outcomes("mmlu", path.parent)
    if path.is_dir() and (path / "train.json").is_file():
        return data.load_llmrouter_outcomes(path)
    table = data.read_table(path)
    if {"prompt", "model", "score"} <= set(table.columns):
        return _long_to_wide(table, str(path))
    table = data.load_outcomes(path)  # the wide shapes (LLMRouter's `scores` dicts, model columns)
    if path.suffix == ".csv":
        contaminated = _routellm_contaminated(path)
        if contaminated:
            before = len(table)
            table = table[~table["prompt"].isin(contaminated)].reset_index(drop=True)
            log.info("%s: dropped %d contaminated prompt(s) (RouteLLM's list)", path, before - len(table))
    return table


def outcome_models(table: pd.DataFrame) -> list[str]:
    """The model score columns of a wide outcomes table (not metadata, token counts or responses)."""
    from routellm_batch.routers.data import outcome_models as data_models

    return [m for m in data_models(table) if m != INPUT_TOKENS and not m.endswith(OUTPUT_TOKENS_SUFFIX)]


def paired_outcomes(table: pd.DataFrame, strong_model: str | None = None, weak_model: str | None = None,
                    prices: Mapping[str, tuple[float, float]] | None = None,
                    expected_output_tokens: int = 256, price_factor: float = 1.0) -> PairedOutcomes:
    """One entry per row of a wide outcomes table with both models' outcomes (and costs, given prices).

    Without model names: exactly two models -> the better one (mean score) is strong; with one name,
    the other model is the only other one. Rows lacking either model's outcome are left out (logged).
    Costs (USD, `price_factor` x the prices: 0.5 = batch APIs' half price): `input_tokens`, else the
    split stage's estimate for the prompt; `<model>_output_tokens`, else the estimate for
    `<model>_response`, else `expected_output_tokens`.
    """
    if "prompt" not in table.columns:
        raise ValueError(f"outcomes table: no 'prompt' column (has {list(table.columns)})")
    models = outcome_models(table)
    if strong_model is None or weak_model is None:
        given = strong_model or weak_model
        others = [m for m in models if m != given]
        if len(others) != (2 if given is None else 1):
            raise ValueError(f"the table has models {models}: name --strong-model and --weak-model")
        if given is None:
            means = table[others].astype(np.float64).mean().sort_values(kind="stable")
            if means.iloc[0] == means.iloc[1]:
                raise ValueError(f"models {models} score the same on average: name --strong-model and --weak-model")
            weak_model, strong_model = str(means.index[0]), str(means.index[1])
        elif strong_model is None:
            strong_model = others[0]
        else:
            weak_model = others[0]
    for role, model in (("strong", strong_model), ("weak", weak_model)):
        if model not in models:
            raise ValueError(f"{role} model {model!r} is not in the table (models: {models})")
    if strong_model == weak_model:
        raise ValueError("the strong and the weak model must differ")
    scores = table[[strong_model, weak_model]].astype(np.float64)
    complete = scores.notna().all(axis=1).to_numpy()
    if not complete.all():
        log.warning("%d row(s) lack an outcome of %s or %s: left out",
                    int((~complete).sum()), strong_model, weak_model)
    rows = table[complete].reset_index(drop=True)
    scores = scores[complete].reset_index(drop=True)
    prompts = rows["prompt"].astype(str)
    costs: dict[str, np.ndarray] = {}
    if prices is not None:
        for role, model in (("strong", strong_model), ("weak", weak_model)):
            if model not in prices:
                raise ValueError(f"price table has no entry for the {role} model {model!r}")
            input_price, output_price = prices[model]
            if INPUT_TOKENS in rows.columns:
                tokens_in = rows[INPUT_TOKENS].to_numpy(dtype=np.float64)
            else:
                tokens_in = estimate_input_tokens(prompts)
            if f"{model}{OUTPUT_TOKENS_SUFFIX}" in rows.columns:
                tokens_out = rows[f"{model}{OUTPUT_TOKENS_SUFFIX}"].to_numpy(dtype=np.float64)
            elif f"{model}{RESPONSE_SUFFIX}" in rows.columns:
                tokens_out = estimate_tokens(rows[f"{model}{RESPONSE_SUFFIX}"])
            else:
                tokens_out = np.full(len(rows), float(expected_output_tokens))
            costs[role] = (tokens_in * input_price + tokens_out * output_price) / 1e6 * price_factor
    return PairedOutcomes(
        prompts=tuple(prompts),
        strong=scores[strong_model].to_numpy(),
        weak=scores[weak_model].to_numpy(),
        strong_model=strong_model,
        weak_model=weak_model,
        strong_cost_usd=costs.get("strong"),
        weak_cost_usd=costs.get("weak"),
    )


# --------------------------------------------------------------------------------------------- output
def format_table(evaluation: Evaluation) -> str:
    """The figures as a fixed-width text table (shares in %)."""
    has_usd = evaluation.outcomes.has_costs
    header = f"{'router':<28} {'APGR':>7} {'CPT50':>7} {'CPT80':>7} {'@95%q':>7}"
    if has_usd:
        header += f" {'USD@95%q':>10}"
    lines = [header, "-" * len(header)]

    def pct(v: float) -> str:
        return "    n/a" if math.isnan(v) else f"{100 * v:6.1f}%"

    for f in evaluation.figures:
        line = f"{f.router:<28} {f.apgr:7.3f} {pct(f.cpt50)} {pct(f.cpt80)} {pct(f.share_at_95pct_strong_quality)}"
        if has_usd:
            line += f" {f.usd_at_95pct_strong_quality:10.4f}"
        lines.append(line)
    o = evaluation.outcomes
    lines.append(
        f"{len(o)} prompts; strong {o.strong_model}: {o.strong.mean():.3f}, weak {o.weak_model}: {o.weak.mean():.3f}"
        + (f"; USD all-strong {o.strong_cost_usd.sum():.4f}, all-weak {o.weak_cost_usd.sum():.4f}" if has_usd else "")
    )
    lines.extend(f"note: {n}" for n in evaluation.notes)
    return "\n".join(lines)


def plot_curves(evaluation: Evaluation, path: str | Path, title: str = "") -> Path:
    """PNG: quality against strong-call share (and against USD when the outcomes carry costs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if evaluation.outcomes.has_costs else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    o = evaluation.outcomes
    for name, curve in evaluation.curves.items():
        baseline = name.startswith(("random", "length", "oracle"))
        style = {"linestyle": "--", "linewidth": 1} if baseline else {"linewidth": 2}
        apgr_value = apgr(curve)
        label = f"{name} (APGR {apgr_value:.3f})"
        axes[0][0].plot(100 * curve.share, curve.quality, label=label, **style)
        if panels == 2:
            axes[0][1].plot(curve.cost_usd, curve.quality, label=label, **style)
    for ax in axes[0]:
        ax.axhline(0.95 * o.strong.mean(), color="grey", linewidth=0.8, linestyle=":")
        ax.set_ylabel("quality (mean outcome)")
        ax.grid(alpha=0.3)
    axes[0][0].set_xlabel("strong-model calls (%)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    if panels == 2:
        axes[0][1].set_xlabel("cost (USD)")
    fig.suptitle(title or f"{len(o)} prompts: strong {o.strong_model} vs weak {o.weak_model}\n"
                 "(dotted line: 95% of all-strong quality)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(evaluation: Evaluation, out_dir: str | Path,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """figures.csv, figures.json (figures + run facts), curves.csv (101-point grid) and routing_quality.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = evaluation.table()
    paths = {"figures_csv": out / "figures.csv", "figures_json": out / "figures.json",
             "curves_csv": out / "curves.csv", "plot": out / "routing_quality.png"}
    table.to_csv(paths["figures_csv"], index=False)
    o = evaluation.outcomes
    document = {
        "strong_model": o.strong_model,
        "weak_model": o.weak_model,
        "prompts": len(o),
        "notes": evaluation.notes,
        **(dict(extra) if extra else {}),
        "figures": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(f).items()}
                    for f in evaluation.figures],
    }
    paths["figures_json"].write_text(json.dumps(document, indent=2) + "\n")
    grid = np.linspace(0.0, 1.0, 101)
    rows = []
    for name, curve in evaluation.curves.items():
        quality = np.interp(grid, curve.share, curve.quality)
        pgr = np.interp(grid, curve.share, curve.pgr)
        cost = np.full_like(grid, np.nan) if curve.cost_usd is None else np.interp(grid, curve.share, curve.cost_usd)
        rows.append(pd.DataFrame({"router": name, "strong_share": grid, "quality": quality, "pgr": pgr,
                                  "cost_usd": cost}))
    pd.concat(rows, ignore_index=True).to_csv(paths["curves_csv"], index=False)
    plot_curves(evaluation, paths["plot"])
    return paths


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outcomes", required=True, metavar="T",
                        help="outcomes: mmlu | gsm8k | llmrouter (shared data), a RouteLLM eval CSV or folder, "
                             "LLMRouter train.json, a wide table (prompt + one score column per model) or a "
                             "long one (prompt, model, score); parquet, csv, jsonl or json")
    parser.add_argument("--router", required=True, metavar="SPEC",
                        help="router kind (mf, sw_ranking, stacked, length, random, ...), 'default' "
                             "(the shipped router) or a checkpoint directory")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="train on K-1 folds, score the held-out fold (split by prompt): out-of-sample figures")
    parser.add_argument("--strong-model", default=None, help="strong model id in the table")
    parser.add_argument("--weak-model", default=None, help="weak model id in the table")
    parser.add_argument("--out", default="out/evaluate", metavar="DIR", help="where figures and the plot go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold split and of training")
    parser.add_argument("--prices", default=None, metavar="FILE",
                        help="price table for the quality-vs-USD curve: the project's versioned YAML "
                             "(providers/prices.yaml layout) or model -> {input_price, output_price} "
                             "(USD per 1M tokens, LLMRouter's models.json)")
    parser.add_argument("--batch-discount", type=float, default=0.5,
                        help="share of the list price paid (0.5 = batch APIs, as pricing.batch_discount; 1 = online)")
    parser.add_argument("--expected-output-tokens", type=int, default=256,
                        help="output tokens per answer when the table has neither counts nor responses")
    parser.add_argument("--embedder", default=None,
                        help="embedder of trained routers: wordllama[:DIM], hf:PATH, ... with optional '+features' "
                             "(default: the family's, as `routellm-batch train`)")
    parser.add_argument("--base-model", default=None, help="bert: local encoder directory to fine-tune in each fold")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a training option of the router family (as `routellm-batch train --option`)")


def _router_trainer(kind: str, args: argparse.Namespace) -> Callable[[PairedOutcomes, Sequence[str]], np.ndarray]:
    """fit_and_score for a trainable router kind: battles from the training folds -> train -> score."""
    options = parse_options(args.option)
    if args.base_model is not None:
        options["base_model"] = args.base_model
    embedder = evaluation_embedder(kind, args.embedder)

    def fit_and_score(train: PairedOutcomes, held_out: Sequence[str]) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix=f"evaluate-{kind}-") as tmp:
            router = train_for_evaluation(kind, training_battles(train), strong_model=train.strong_model,
                                          weak_model=train.weak_model, seed=args.seed, embedder=embedder,
                                          out_dir=Path(tmp) / "router", **options)
            return router.score(list(held_out))

    return fit_and_score


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """--option KEY=VALUE items -> training options (VALUE read as JSON when it parses)."""
    options: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EvaluateError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def evaluation_embedder(kind: str, spec: str | None = None) -> Any:
    """The embedder a `kind` trains with in every fold, remembering vectors so each prompt is embedded once.

    `spec` None: the family's default (routers.training.DEFAULT_EMBEDDERS; wordllama for the others).
    None for families that bring their own encoder (bert).
    """
    from routellm_batch.routers.embedders import CachingEmbedder, build_embedder
    from routellm_batch.routers.training import DEFAULT_EMBEDDERS, TRAINERS

    if spec is None:
        if kind in TRAINERS and kind not in DEFAULT_EMBEDDERS:
            return None
        spec = DEFAULT_EMBEDDERS.get(kind, "wordllama")
    return CachingEmbedder(build_embedder(spec))


def train_for_evaluation(kind: str, battles: pd.DataFrame, *, strong_model: str, weak_model: str, seed: int,
                         embedder: Any, out_dir: Path | None = None, **options: Any) -> Any:
    """A router of `kind` trained on `battles`: routers.training.train_router for the kinds it trains
    (mf, sw_ranking, bert; `out_dir` is where it may write the checkpoint), else the family's `fit`."""
    from routellm_batch.routers.registry import resolve
    from routellm_batch.routers.training import TRAINERS, train_router

    if kind in TRAINERS:
        if out_dir is None and kind == "bert":  # it writes a checkpoint while training and loads it back whole
            with tempfile.TemporaryDirectory(prefix="evaluate-bert-") as tmp:
                return train_router(kind, battles, Path(tmp) / "router", seed=seed, strong_model=strong_model,
                                    weak_model=weak_model, embedder=embedder, **options)
        return train_router(kind, battles, out_dir, seed=seed, strong_model=strong_model, weak_model=weak_model,
                            embedder=embedder, **options)
    cls = resolve(kind)
    if not hasattr(cls, "fit"):
        raise EvaluateError(f"router kind {kind!r} has no training entry point")
    return cls.fit(battles, embedder=embedder, seed=seed, strong_model=strong_model, weak_model=weak_model,
                   **options)


def training_battles(outcomes: PairedOutcomes) -> pd.DataFrame:
    """The strong-vs-weak battles of these outcomes (routers.data: the higher score wins, equal ties)."""
    from routellm_batch.routers.data import outcomes_to_battles

    wide = pd.DataFrame({"prompt": list(outcomes.prompts), outcomes.strong_model: outcomes.strong,
                         outcomes.weak_model: outcomes.weak})
    return outcomes_to_battles(wide, pairs=[(outcomes.strong_model, outcomes.weak_model)])


class EvaluateError(ValueError):
    """A bad --router / --folds combination or unusable input; the message says what to change."""


def run(args: argparse.Namespace) -> int:
    from routellm_batch.routers.data import DataError

    try:
        return _run(args)
    except (EvaluateError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"routellm-batch evaluate: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from routellm_batch.routers.registry import ROUTERS, resolve

    spec = args.router
    is_checkpoint = Path(spec).is_dir()
    if not is_checkpoint and spec not in ROUTERS:
        raise EvaluateError(f"--router {spec!r} is neither a checkpoint directory nor a router kind "
                            f"({', '.join(sorted(ROUTERS))})")
    if spec == "default":  # the router shipped in the package: a checkpoint like any other
        from routellm_batch.routers.checkpoint import DEFAULT_CHECKPOINT

        spec, is_checkpoint = str(DEFAULT_CHECKPOINT), True
    trainable = not is_checkpoint and spec not in BASELINE_KINDS
    if args.folds is not None and is_checkpoint:
        raise EvaluateError("--folds retrains the router in every fold: pass a router kind, not a checkpoint")
    if args.folds is None and trainable:
        raise EvaluateError(f"router kind {spec!r} must be trained: pass --folds K (out-of-fold figures) "
                            "or a checkpoint directory")
    if args.folds is not None and args.folds < 2:
        raise EvaluateError(f"--folds must be at least 2, got {args.folds}")
    table = load_outcomes_table(args.outcomes)
    prices = load_price_table(args.prices) if args.prices else None
    if not 0 < args.batch_discount <= 1:
        raise EvaluateError(f"--batch-discount must be in (0, 1], got {args.batch_discount}")
    outcomes = paired_outcomes(table, args.strong_model, args.weak_model, prices, args.expected_output_tokens,
                               price_factor=args.batch_discount)
    notes: list[str] = []
    folds = None
    if trainable:
        scores = out_of_fold_scores(outcomes, _router_trainer(spec, args), args.folds, args.seed)
        folds = fold_ids(outcomes.prompts, args.folds, args.seed)
        mode = f"out-of-fold ({args.folds} folds, seed {args.seed})"
        notes.append("every row's scores (baselines too) ranked within their fold: one model per fold")
    else:
        if is_checkpoint:
            from routellm_batch.routers.checkpoint import load_checkpoint

            router = _for_pair(load_checkpoint(spec), outcomes)
            notes.append("in-sample: figures mean nothing for prompts the checkpoint was trained on")
            log.warning("scoring checkpoint %s on all %d prompts: if it was trained on them, the figures are "
                        "in-sample and mean nothing; use --folds K with a router kind", spec, len(outcomes))
            mode = "checkpoint, all prompts"
        else:
            router = resolve(spec)()
            mode = "untrained baseline, all prompts"
            if args.folds is not None:
                notes.append(f"{spec} needs no training: the same scores in every fold")
        scores = np.asarray(router.score(list(outcomes.prompts)), dtype=np.float64)
    name = Path(spec).name if is_checkpoint else spec
    evaluation = evaluate_scores(outcomes, {name: scores}, folds=folds)
    evaluation.notes.extend(notes)
    print(f"routing quality: {name}, {mode}")
    print(format_table(evaluation))
    extra = {"router": name, "mode": mode, "outcomes": str(args.outcomes)}
    if prices is not None:
        extra.update(prices=str(args.prices), price_factor=args.batch_discount)
        print(f"USD at {args.batch_discount:g} x the list prices of {args.prices}")
    paths = write_report(evaluation, args.out, extra=extra)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _for_pair(router: Any, outcomes: PairedOutcomes) -> Any:
    """A multi-model checkpoint set to the evaluated pair when it knows both models; else as it is."""
    pair = (getattr(router, "strong_model", None), getattr(router, "weak_model", None))
    wanted = (outcomes.strong_model, outcomes.weak_model)
    if pair == wanted or pair == (None, None):
        return router
    if hasattr(router, "with_pair") and set(wanted) <= set(getattr(router, "models", ())):
        return router.with_pair(*wanted)
    log.warning("the checkpoint routes %s vs %s, the table compares %s vs %s", *pair, *wanted)
    return router
