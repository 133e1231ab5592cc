"""How many labelled prompts does a workload need? Out-of-fold APGR of a router learned from N in-domain prompts.

    python benchmarks/learning_curve.py [--data-root DIR] [--sizes 100,300,1000,3000] [--repeats 3]
                                        [--families mf,sw_ranking,stacked,embed_ridge] [--folds 5] [--out out/learning_curve]

Workloads: each of LLMRouter's 14 tasks alone (strong llama-3.1-nemotron-51b-instruct vs weak
mistral-7b-instruct-v0.3, the pair with a gap on most tasks), and RouteLLM's MMLU and GSM8K alone
(gpt-4-1106-preview vs Mixtral-8x7B). For each N that the workload has (LLMRouter tasks hold 150-504
prompts; a size past a workload's means all of it), `repeats` draws of N prompts; on each, exactly what `routellm-batch learn` does: 5-fold
out-of-fold scores, the family chosen by inner 3-fold CV inside each outer fold ("learned"), and each
family alone; beside, on the same prompts, the shipped router, random (mean of 10 seeds), length and
the oracle. Cells are the mean APGR over the draws (and its spread, min-max, with --spread).

The shipped router was trained on all of these prompts (routers/default/NOTICE): its figures here are
in-sample, so optimistic; the learned routers' are out-of-fold. APGR is undefined (n/a) where the strong
model is not better than the weak one on the drawn prompts (the oracle leaves no room).
Every column, baselines and the shipped router included, is ranked within the outer folds before its
curve is drawn (evaluation.within_fold_ranks): one model scores each fold, so fold models' offsets must
not rank folds against each other; random and length are unchanged by that in expectation.

Long inputs (issue 10): --longest K keeps each workload's K longest prompts, and --view HEAD,TAIL routes
on text_view.bounded_view of every prompt (routers, shipped and baselines alike see the view): run it
with and without --view to see whether the bounded view lowers the out-of-fold APGR.

Data: --data-root, else $ROUTELLM_BATCH_DATA, else shared/data beside the checkout.
Prints the table (Markdown) and writes it, with every draw, under --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from routellm_batch.evaluation import (
    PairedOutcomes,
    apgr,
    baseline_scores,
    evaluation_embedder,
    fold_ids,
    mean_curve,
    routing_curve,
    within_fold_ranks,
)
from routellm_batch.routers import data as D
from routellm_batch.routers.checkpoint import load_default_router
from routellm_batch.text_view import bounded_view
from routellm_batch.stages.learn import nested_out_of_fold_scores

LLMROUTER_STRONG = "llama-3.1-nemotron-51b-instruct"
LLMROUTER_WEAK = "mistral-7b-instruct-v0.3"


def workloads(root: Path) -> dict[str, PairedOutcomes]:
    out: dict[str, PairedOutcomes] = {}
    llm = D.load_llmrouter_outcomes(root)
    for source, part in sorted(llm.groupby("source")):
        part = part.drop_duplicates("prompt")
        out[source.removeprefix("llmrouter/")] = PairedOutcomes(
            tuple(part["prompt"]), part[LLMROUTER_STRONG].to_numpy(), part[LLMROUTER_WEAK].to_numpy(),
            LLMROUTER_STRONG, LLMROUTER_WEAK)
    for bench in D.ROUTELLM_BENCHMARKS:
        part = D.load_routellm_outcomes(bench, root).drop_duplicates("prompt")
        out[f"{bench} (RouteLLM)"] = PairedOutcomes(
            tuple(part["prompt"]), part[D.ROUTELLM_STRONG].to_numpy(), part[D.ROUTELLM_WEAK].to_numpy(),
            D.ROUTELLM_STRONG, D.ROUTELLM_WEAK)
    return out


def measure(outcomes: PairedOutcomes, families: list[str], folds: int, seed: int, embedders: dict) -> dict[str, float]:
    row: dict[str, float] = {}
    if not outcomes.strong.mean() > outcomes.weak.mean():
        return row  # no gap to recover: APGR undefined
    ids = fold_ids(outcomes.prompts, folds, seed)  # the outer folds of nested_out_of_fold_scores

    def _apgr(scores: list[np.ndarray], outcomes: PairedOutcomes) -> float:
        return apgr(mean_curve([routing_curve(within_fold_ranks(s, ids), outcomes) for s in scores]))

    row["learned"] = _apgr([nested_out_of_fold_scores(outcomes, families, folds, 3, seed, embedders)[0]], outcomes)
    if len(families) > 1:
        for kind in families:
            row[kind] = _apgr([nested_out_of_fold_scores(outcomes, [kind], folds, 3, seed, embedders)[0]], outcomes)
    shipped = load_default_router(strong_model=outcomes.strong_model, weak_model=outcomes.weak_model)
    row["shipped"] = _apgr([np.asarray(shipped.score(list(outcomes.prompts)))], outcomes)
    for name, sets in baseline_scores(outcomes.prompts, outcomes).items():
        row[name] = _apgr(sets, outcomes)
    return row


def _markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--sizes", default="100,300,1000,3000")
    parser.add_argument("--repeats", type=int, default=3, help="draws of N prompts per cell (mean reported)")
    parser.add_argument("--families", default="mf,sw_ranking,stacked,embed_ridge")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated workload names (default: all)")
    parser.add_argument("--spread", action="store_true", help="show min-max of the draws in each cell")
    parser.add_argument("--longest", type=int, default=None, metavar="K", help="keep each workload's K longest prompts")
    parser.add_argument("--view", default=None, metavar="HEAD,TAIL",
                        help="route on the first HEAD and last TAIL characters of each prompt (text_view)")
    parser.add_argument("--out", default="out/learning_curve")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = D.default_data_root(args.data_root)
    why = D.shared_data_missing(root)
    if why:
        parser.error(why)
    sizes = [int(s) for s in args.sizes.split(",")]
    families = args.families.split(",")
    embedders = {kind: evaluation_embedder(kind) for kind in families}  # each prompt embedded once per family
    all_workloads = workloads(root)
    chosen = args.only.split(",") if args.only else list(all_workloads)
    rows = []
    started = time.perf_counter()
    for name in chosen:
        outcomes = all_workloads[name]
        if args.longest:
            lengths = np.array([len(p) for p in outcomes.prompts])
            outcomes = outcomes.subset(np.sort(np.argsort(-lengths, kind="stable")[:args.longest]))
        if args.view:
            head, tail = (int(v) for v in args.view.split(","))
            outcomes = PairedOutcomes(tuple(bounded_view(p, head, tail) for p in outcomes.prompts), outcomes.strong,
                                      outcomes.weak, outcomes.strong_model, outcomes.weak_model)
        for n in sorted({min(s, len(outcomes)) for s in sizes}):  # a size past the workload: all of it
            for r in range(args.repeats if n < len(outcomes) else 1):
                pick = np.sort(np.random.default_rng(1000 * r + n).permutation(len(outcomes))[:n])
                sub = outcomes.subset(pick)
                row = {"workload": name, "N": n, "draw": r, "q_strong": float(sub.strong.mean()),
                       "q_weak": float(sub.weak.mean()), **measure(sub, families, args.folds, r, embedders)}
                rows.append(row)
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    draws = pd.DataFrame(rows)
    cols = ["learned", *(families if len(families) > 1 else []), "shipped", "random", "length", "oracle"]
    cols = [c for c in cols if c in draws.columns]
    grouped = draws.groupby(["workload", "N"], sort=False)
    table = grouped[["q_strong", "q_weak"]].mean().round(2)
    table["draws"] = grouped.size()
    for c in cols:
        mean, lo, hi = grouped[c].mean(), grouped[c].min(), grouped[c].max()
        table[c] = [("n/a" if pd.isna(m) else f"{m:.3f}" + (f" ({a:.2f}-{b:.2f})" if args.spread and k > 1 else ""))
                    for m, a, b, k in zip(mean, lo, hi, table["draws"], strict=True)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draws.to_csv(out / "draws.csv", index=False)
    markdown = _markdown(table.reset_index())
    (out / "learning_curve.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\n{len(rows)} draws in {time.perf_counter() - started:.0f}s; learned = out-of-fold ({args.folds} folds), "
          f"family by inner 3-fold CV among {families}; shipped = in-sample (trained on these prompts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
