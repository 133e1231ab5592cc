"""Routing-quality benchmark: every router family side by side, out-of-fold, on RouteLLM's MMLU and GSM8K.

Strong gpt-4-1106-preview vs weak Mixtral-8x7B, RouteLLM's contaminated prompts dropped. Each trained
router is fitted on 4 of 5 folds (split by prompt, seeded) and scores the 5th, so every figure is
out-of-sample; the stacked router also chooses its hyperparameters and blend by inner CV on the
training folds only (nested). Baselines on the same prompts: random (mean of 10 seeds), length, oracle.

Command (repo root; about 4-6 minutes on 2 CPU cores, embeddings cached across routers and folds):

    .venv/bin/python benchmarks/routing_quality.py

Options: --benchmarks mmlu,gsm8k  --routers mf,sw_ranking,stacked  --folds 5  --seed 0
         --out out/routing_quality (figures.csv/json, curves.csv, routing_quality.png per benchmark;
         summary.json)  --extra-llmrouter (also mf trained with LLMRouter's 9-model battles added,
         prompts overlapping the benchmark removed; a few more minutes per benchmark).
Data: $ROUTELLM_BATCH_DATA, else shared/data beside the checkout (routellm_evals/, llmrouter/).

bert is not run: it fine-tunes a pretrained encoder, and none is available offline here (no model hub;
no local encoder installed); fine-tuning one on CPU for 5 folds of 11k prompts would take hours.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from routellm_batch.evaluation import (
    PairedOutcomes,
    evaluate_scores,
    evaluation_embedder,
    format_table,
    out_of_fold_scores,
    paired_outcomes,
    train_for_evaluation,
    training_battles,
    write_report,
)
from routellm_batch.routers import data

# Published RouteLLM best APGR (arXiv 2406.18665) and this benchmark's goals.
PUBLISHED_BEST = {"mmlu": 0.60, "gsm8k": 0.62}
GOAL = {"mmlu": 0.63, "gsm8k": 0.62}
DEFAULT_ROUTERS = ("mf", "sw_ranking", "stacked")


def _overlap_key(text: str) -> str:
    """Normalized prefix: LLMRouter reuses GSM8K test questions (its mgsm task) with other wording around them."""
    return re.sub(r"\W+", " ", text).strip().lower()[:80]


def llmrouter_battles(exclude: PairedOutcomes) -> pd.DataFrame:
    """LLMRouter's battles (every pair of its 9 models) minus prompts that overlap the benchmark's."""
    outcomes = data.load_llmrouter_outcomes()
    taken = {_overlap_key(p) for p in exclude.prompts}
    keep = ~outcomes["prompt"].map(_overlap_key).isin(taken)
    logging.info("llmrouter: %d of %d prompts overlap the benchmark, dropped", int((~keep).sum()), len(outcomes))
    return data.outcomes_to_battles(outcomes[keep].reset_index(drop=True))


def run_benchmark(name: str, routers: list[str], folds: int, seed: int, embedders: dict[str, object],
                  extra_llmrouter: bool, out: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    outcomes = paired_outcomes(data.load_routellm_outcomes(name), data.ROUTELLM_STRONG, data.ROUTELLM_WEAK)
    print(f"\n== {name}: {len(outcomes)} prompts, {folds} folds (seed {seed}); strong {outcomes.strong_model} "
          f"{outcomes.strong.mean():.3f}, weak {outcomes.weak_model} {outcomes.weak.mean():.3f}", flush=True)
    variants: list[tuple[str, str, pd.DataFrame | None]] = [(kind, kind, None) for kind in routers]
    if extra_llmrouter:
        variants.append(("mf+llmrouter", "mf", llmrouter_battles(outcomes)))
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for label, kind, extra in variants:

        def fit_and_score(train: PairedOutcomes, held_out, kind=kind, extra=extra) -> np.ndarray:
            battles = training_battles(train)
            if extra is not None:
                battles = pd.concat([battles, extra], ignore_index=True)
            router = train_for_evaluation(kind, battles, strong_model=train.strong_model,
                                          weak_model=train.weak_model, seed=seed, embedder=embedders[kind])
            return router.score(list(held_out))

        start = time.perf_counter()
        scores[label] = out_of_fold_scores(outcomes, fit_and_score, folds, seed)
        seconds[label] = time.perf_counter() - start
        print(f"  {label}: {seconds[label]:.0f} s (train {folds} folds + score)", flush=True)
    evaluation = evaluate_scores(outcomes, scores)
    print(format_table(evaluation))
    write_report(evaluation, out / name, extra={"benchmark": name, "folds": folds, "seed": seed,
                                               "seconds": seconds})
    table = evaluation.table()
    table["seconds"] = table["router"].map(seconds)
    return table, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", default="mmlu,gsm8k")
    parser.add_argument("--routers", default=",".join(DEFAULT_ROUTERS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedder", default=None,
                        help="embedder spec for every family (default: each family's, as routellm-batch train)")
    parser.add_argument("--extra-llmrouter", action="store_true")
    parser.add_argument("--out", default="out/routing_quality")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    routers = [r for r in args.routers.split(",") if r]
    if "bert" in routers:
        print("bert: skipped (needs a pretrained encoder; none available offline; see the docstring)")
        routers.remove("bert")
    out = Path(args.out)
    # one caching embedder per family, shared by its folds (and by both benchmarks): each prompt embedded once
    embedders, by_spec = {}, {}
    for kind in sorted({*routers, "mf"}):
        embedder = evaluation_embedder(kind, args.embedder)
        embedders[kind] = by_spec.setdefault(json.dumps(embedder.spec(), sort_keys=True), embedder)
    started = time.perf_counter()
    tables = {}
    for name in [b for b in args.benchmarks.split(",") if b]:
        tables[name], _ = run_benchmark(name, routers, args.folds, args.seed, embedders, args.extra_llmrouter, out)
    total = time.perf_counter() - started

    # side by side: one row per router, APGR / CPT(50%) / CPT(80%) per benchmark
    names = list(tables)
    rows = list(dict.fromkeys(r for t in tables.values() for r in t["router"]))
    header = f"{'router':<28}" + "".join(f" | {n + ' APGR':>10} {'CPT50':>6} {'CPT80':>6}" for n in names)
    print(f"\n== side by side ({args.folds}-fold out-of-fold; CPT = share of strong calls)")
    print(f"{header}\n{'-' * len(header)}")

    def cell(value: float, pct: bool) -> str:
        if math.isnan(value):
            return "n/a"
        return f"{100 * value:.1f}%" if pct else f"{value:.3f}"

    for r in rows:
        line = f"{r:<28}"
        for n in names:
            t = tables[n].set_index("router")
            if r in t.index:
                f = t.loc[r]
                line += f" | {cell(f.apgr, False):>10} {cell(f.cpt50, True):>6} {cell(f.cpt80, True):>6}"
            else:
                line += f" | {'':>10} {'':>6} {'':>6}"
        print(line)
    summary = {"command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
               "folds": args.folds, "seed": args.seed, "seconds_total": total, "benchmarks": {}}
    for n, t in tables.items():
        learned = t[~t["router"].str.match(r"random|length|oracle")]
        best = learned.loc[learned["apgr"].idxmax()] if len(learned) else None
        length = float(t.loc[t["router"] == "length", "apgr"].iloc[0])
        if best is not None:
            verdict = "MET" if best.apgr >= GOAL[n] and best.apgr > length else "NOT met"
            print(f"{n}: best {best.router} APGR {best.apgr:.3f} vs length {length:.3f}, published best about "
                  f"{PUBLISHED_BEST[n]:.2f}, goal >= {GOAL[n]:.2f}: {verdict}")
        summary["benchmarks"][n] = {
            "figures": json.loads(t.to_json(orient="records")),
            "best": None if best is None else str(best.router),
            "goal_apgr": GOAL[n],
            "published_best_apgr": PUBLISHED_BEST[n],
        }
    print(f"total {total:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}/summary.json and {', '.join(f'{out}/{n}/' for n in names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
