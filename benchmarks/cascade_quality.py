"""Cascade quality: routing on the prompt alone vs escalating on the weak answer, out-of-fold, on GSM8K.

RouteLLM's GSM8K outcomes (strong gpt-4-1106-preview vs weak Mixtral-8x7B, both full answers and
their correctness recorded; contaminated prompts dropped). The same 5 folds (split by prompt, seeded)
for every method; each is trained on 4 folds and scores the 5th, hyperparameters chosen by inner CV on
the training folds only:
- prompt-only router: the stacked router (feature ridge, embedding ridge, kNN, blended);
- reference: a plain ridge on wordllama embeddings of prompt and weak answer plus a few text statistics
  of each (routers.embedders.text_features; the figure to beat, 0.70 in routing-quality.md);
- cascade: the `learned` escalation scorer on the weak answer (escalation/learned.py);
- combined: a non-negative blend of the router's score and the scorer's doubt, its weights fitted on
  inner out-of-fold predictions of the training folds;
- random (mean of 10 seeds), length, oracle, on the same prompts.

Cost, in USD at batch prices (list price x --batch-discount) of a strong/weak pair from the shipped
price table, tokens estimated from the texts (the split stage's rule): a router pays the weak call for
a weak-routed prompt and the strong call for a strong-routed one; a cascade pays the weak call for
every prompt and the strong call too for each escalated one. APGR and CPT are against the share of
strong calls; "USD@95%q" is the cost of reaching 95% of all-strong quality under each cost model.

Command (repo root; a minute or two on 2 CPU cores):

    .venv/bin/python benchmarks/cascade_quality.py [--strong-price gpt-4.1 --weak-price gpt-4.1-mini]
        [--folds 5 --seed 0 --batch-discount 0.5 --data DIR --out out/cascade_quality]

Data: --data, else $ROUTELLM_BATCH_DATA, else shared/data beside the checkout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from routellm_batch.escalation.base import WeakAnswer
from routellm_batch.escalation.learned import LearnedScorer
from routellm_batch.evaluation import (
    PairedOutcomes,
    RouterFigures,
    estimate_input_tokens,
    estimate_tokens,
    evaluate_scores,
    evaluation_embedder,
    fold_ids,
    load_price_table,
    training_battles,
    write_report,
)
from routellm_batch.routers import data
from routellm_batch.routers.embedders import text_features
from routellm_batch.routers.stacked import RIDGE_GRID, StackedRouter, _group_folds, _nonnegative_blend, _ridge_path, _unit

PRICES = Path(__file__).resolve().parents[1] / "routellm_batch" / "providers" / "prices.yaml"
REFERENCE_APGR, GOAL_APGR = 0.70, 0.75


def load_gsm8k(root: str | None) -> tuple[pd.DataFrame, str, str]:
    """prompt, strong/weak outcome and answer columns, contaminated prompts dropped."""
    outcomes = data.load_routellm_outcomes("gsm8k", root)
    base = data.default_data_root(root)
    csv = base / "routellm_evals" / "gsm8k" / "gsm8k_responses.csv"
    answers = pd.read_csv(csv if csv.is_file() else base / "gsm8k" / "gsm8k_responses.csv")
    columns = {f"{m}_response": f"{role}_answer" for m, role in ((data.ROUTELLM_STRONG, "strong"),
                                                                   (data.ROUTELLM_WEAK, "weak"))}
    answers = answers.drop_duplicates("prompt")[["prompt", *columns]].rename(columns=columns)
    table = outcomes.merge(answers, on="prompt", how="left", validate="one_to_one")
    for role in ("strong", "weak"):
        table[f"{role}_answer"] = table[f"{role}_answer"].fillna("").astype(str)
    return table, data.ROUTELLM_STRONG, data.ROUTELLM_WEAK


def call_costs(prompts: list[str], answers: pd.Series, price: tuple[float, float], discount: float) -> np.ndarray:
    """USD of one call per prompt: estimated input and output tokens at (input, output) USD per 1M tokens."""
    return (estimate_input_tokens(prompts) * price[0] + estimate_tokens(answers) * price[1]) / 1e6 * discount


def out_of_fold(n: int, folds: np.ndarray, fit_score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Scores where row i is scored by `fit_score(train_index, held_out_index)` trained without its fold."""
    scores = np.full(n, np.nan)
    for k in np.unique(folds):
        train, held = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        scores[held] = fit_score(train, held)
    return scores


def hybrid_usd_at(target: float, direct_share: float, router: np.ndarray, doubt: np.ndarray,
                  outcomes: PairedOutcomes) -> tuple[float, float]:
    """(USD, strong-call share) at the first escalation count whose quality reaches `target`, when pass 1
    sends the top `direct_share` of router scores straight to the strong model (no weak call) and pass 2
    escalates the rest by doubt; NaN when even escalating everything falls short."""
    n = len(outcomes)
    direct = np.zeros(n, dtype=bool)
    direct[np.argsort(-router, kind="stable")[: round(direct_share * n)]] = True
    rest = np.flatnonzero(~direct)
    order = rest[np.argsort(-doubt[rest], kind="stable")]
    strong, weak = outcomes.strong, outcomes.weak
    s_usd, w_usd = outcomes.strong_cost_usd, outcomes.weak_cost_usd
    quality = (strong[direct].sum() + weak[rest].sum() + np.concatenate([[0.0], np.cumsum(strong[order] - weak[order])])) / n
    usd = s_usd[direct].sum() + w_usd[rest].sum() + np.concatenate([[0.0], np.cumsum(s_usd[order])])
    hit = np.flatnonzero(quality >= target - 1e-12)
    if not hit.size:
        return math.nan, math.nan
    return float(usd[hit[0]]), (int(direct.sum()) + int(hit[0])) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strong-price", default="gpt-4.1", help="price table model for the strong calls")
    parser.add_argument("--weak-price", default="gpt-4.1-mini", help="price table model for the weak calls")
    parser.add_argument("--prices", default=str(PRICES), help="price table (the shipped providers/prices.yaml)")
    parser.add_argument("--batch-discount", type=float, default=0.5, help="share of the list price paid (batch: 0.5)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--inner-folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="shared data folder (default: $ROUTELLM_BATCH_DATA or beside the checkout)")
    parser.add_argument("--out", default="out/cascade_quality")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()

    table, strong_model, weak_model = load_gsm8k(args.data)
    prompts, answers = table["prompt"].tolist(), table["weak_answer"].tolist()
    prices = load_price_table(args.prices)
    for name in (args.strong_price, args.weak_price):
        if name not in prices:
            raise SystemExit(f"cascade_quality: {name!r} is not in the price table {args.prices}")
    strong_usd = call_costs(prompts, table["strong_answer"], prices[args.strong_price], args.batch_discount)
    weak_usd = call_costs(prompts, table["weak_answer"], prices[args.weak_price], args.batch_discount)
    common = {"prompts": tuple(prompts), "strong": table[strong_model].to_numpy(float),
              "weak": table[weak_model].to_numpy(float), "strong_model": strong_model, "weak_model": weak_model}
    routed = PairedOutcomes(**common, strong_cost_usd=strong_usd, weak_cost_usd=weak_usd)
    # a cascade always pays the weak call; an escalated prompt pays the strong call on top
    cascaded = PairedOutcomes(**common, strong_cost_usd=weak_usd + strong_usd, weak_cost_usd=weak_usd)
    y = routed.strong - routed.weak
    folds = fold_ids(prompts, args.folds, args.seed)
    print(f"GSM8K: {len(prompts)} prompts, {args.folds} folds (seed {args.seed}); strong {strong_model} "
          f"{routed.strong.mean():.3f}, weak {weak_model} {routed.weak.mean():.3f}; priced as {args.strong_price} / "
          f"{args.weak_price} at {args.batch_discount:g} x list", flush=True)

    embedder = evaluation_embedder("stacked")  # caching wordllama: each text embedded once across folds
    items = [WeakAnswer(p, a) for p, a in zip(prompts, answers, strict=True)]

    def router_scores(train: np.ndarray, held: np.ndarray) -> np.ndarray:
        router = StackedRouter.fit(training_battles(routed.subset(train)), embedder=embedder, seed=args.seed,
                                   strong_model=strong_model, weak_model=weak_model, inner_folds=args.inner_folds)
        return router.score([prompts[i] for i in held]).astype(np.float64)

    def scorer_scores(train: np.ndarray, held: np.ndarray) -> np.ndarray:
        scorer = LearnedScorer.fit([prompts[i] for i in train], [answers[i] for i in train], y[train],
                                   embedder=embedder, seed=args.seed, inner_folds=args.inner_folds)
        return scorer.score([items[i] for i in held])

    E = np.hstack([_unit(embedder.embed(texts).astype(np.float64)) for texts in (prompts, answers)]
                  + [text_features(texts).astype(np.float64) for texts in (prompts, answers)])

    def reference_ridge(train: np.ndarray, held: np.ndarray) -> np.ndarray:
        inner = _group_folds([prompts[i] for i in train], args.inner_folds, args.seed)
        X, t = E[train], y[train]
        errors = np.zeros(len(RIDGE_GRID))
        for k in range(args.inner_folds):
            tr, va = inner != k, inner == k
            errors += [np.sum((p - t[va]) ** 2) for p in _ridge_path(X[tr], t[tr], RIDGE_GRID, X[va])]
        lam = RIDGE_GRID[int(np.argmin(errors))]
        return _ridge_path(X, t, [lam], E[held])[0]

    def combined(train: np.ndarray, held: np.ndarray) -> np.ndarray:
        # blend weights from inner out-of-fold scores of both models on the training folds only
        inner = _group_folds([prompts[i] for i in train], args.inner_folds, args.seed)
        parts = np.column_stack([out_of_fold(len(train), inner, lambda a, b: f(train[a], train[b]))
                                 for f in (router_scores, scorer_scores)])
        weights, intercept = _nonnegative_blend(parts, y[train])
        return np.column_stack([router_scores(train, held), scorer_scores(train, held)]) @ weights + intercept

    methods = {"prompt-only router (stacked)": router_scores,
               "ref: ridge emb+stats p+a": reference_ridge,
               "cascade: learned scorer": scorer_scores,
               "combined: router + scorer": combined}
    scores, seconds = {}, {}
    for name, fit_score in methods.items():
        t0 = time.perf_counter()
        scores[name] = out_of_fold(len(prompts), folds, fit_score)
        seconds[name] = time.perf_counter() - t0
        print(f"  {name}: {seconds[name]:.0f} s", flush=True)

    route = evaluate_scores(routed, {"prompt-only router (stacked)": scores["prompt-only router (stacked)"]})
    cascade = evaluate_scores(cascaded, {k: v for k, v in scores.items() if k != "prompt-only router (stacked)"})
    rows: list[tuple[str, RouterFigures]] = [("route", f) for f in route.figures]
    rows += [("cascade", f) for f in cascade.figures]
    header = f"{'method':<32} {'cost':<8} {'APGR':>6} {'CPT50':>7} {'CPT80':>7} {'@95%q':>7} {'USD@95%q':>9}"
    print(f"\n{header}\n{'-' * len(header)}")

    def pct(v: float) -> str:
        return "    n/a" if math.isnan(v) else f"{100 * v:6.1f}%"

    for cost_model, f in rows:
        usd = "n/a" if math.isnan(f.usd_at_95pct_strong_quality) else f"{f.usd_at_95pct_strong_quality:.4f}"
        print(f"{f.router:<32} {cost_model:<8} {f.apgr:6.3f} {pct(f.cpt50)} {pct(f.cpt80)} "
              f"{pct(f.share_at_95pct_strong_quality)} {usd:>9}")
    print(f"USD all-weak {weak_usd.sum():.4f}; all-strong (route) {strong_usd.sum():.4f}; "
          f"weak + all escalated (cascade) {(weak_usd + strong_usd).sum():.4f}; "
          f"95% of all-strong quality = {0.95 * routed.strong.mean():.3f}")
    target = 0.95 * routed.strong.mean()
    print("\npass 1 sends the top share of prompt-only router scores straight to the strong model, pass 2 "
          "escalates the rest by the learned scorer's doubt (95% of all-strong quality):")
    for share in (0.0, 0.05, 0.1, 0.2, 0.3):
        usd, calls = hybrid_usd_at(target, share, scores["prompt-only router (stacked)"],
                                   scores["cascade: learned scorer"], routed)
        print(f"  direct {100 * share:4.0f}%: USD {usd:.4f}, strong calls {100 * calls:.1f}%")
    best = max(f.apgr for _, f in rows if f.router.startswith(("cascade", "combined")))
    print(f"best cascade APGR {best:.3f} (figure to beat {REFERENCE_APGR}, goal {GOAL_APGR}); "
          f"{time.perf_counter() - started:.0f} s in all")

    out = Path(args.out)
    extra = {"folds": args.folds, "seed": args.seed, "strong_price": args.strong_price,
             "weak_price": args.weak_price, "batch_discount": args.batch_discount, "seconds": seconds}
    write_report(route, out / "route", extra={**extra, "cost_model": "route"})
    write_report(cascade, out / "cascade", extra={**extra, "cost_model": "cascade"})
    (out / "summary.json").write_text(json.dumps(
        [{"cost_model": c, "router": f.router, "apgr": f.apgr, "cpt50": f.cpt50, "cpt80": f.cpt80,
          "share_at_95pct": f.share_at_95pct_strong_quality, "usd_at_95pct": f.usd_at_95pct_strong_quality}
         for c, f in rows], indent=2, default=lambda v: None) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
