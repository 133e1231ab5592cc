"""`learn`: a router for this job's own prompts, learned through the batch APIs and proved out-of-fold.

    routellm-batch learn --config C --sample N --out DIR [--run-date D] [--max-usd X] [--router mf] [--promote]
                         [--labels-from-pool]

1. Sample N valid prompts of run date D (the `prompts` table `validate` wrote; validated now when absent):
   deterministic by a hash of prompt_id, identical prompts once, optionally evenly across
   `learn.stratify_by`. The sample is fixed in DIR/sample.parquet: a re-run uses the same one.
2. Print the estimated USD of the whole learning run (both answers and the judge, batch prices, outputs
   at max_tokens); `--max-usd` refuses above it before anything is submitted.
3. Both models answer every sampled prompt, then the judge (when labels come from a judge) reads them,
   through submit / wait / collect, each under a run of its own below DIR/batches (job name derived from
   DIR): a crashed learning run is resumed by the same command, and reconciliation never pays twice.
4. Labels (routellm_batch.labels): by reference (a matcher against a gold column) or by the judge
   (pairwise in both orders, or a 1-5 grade); an unusable answer or verdict is an error row with its reason.
5. Train: the families of `learn.routers` (best by inner cross-validation inside each outer fold unless one
   is named); out-of-fold figures beside random, length, the configured router and the oracle, each
   with a bootstrap interval; the final router is trained on every labelled prompt.
   The labelled prompts join the job's labelled pool (`labels/`, routellm_batch.labels_pool), which the
   nightly audit appends to; `--labels-from-pool` also trains (and evaluates) on the pool's prompts labelled
   the same way, so the router keeps learning from the job's own traffic.
6. DIR: checkpoint/, learn_report.json, labels.csv (labels and out-of-fold scores), learn_curves.png.
   `--promote`: refused, with the figures, unless the APGR interval's lower bound beats random and length.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from routellm_batch.config import ConfigError, LearnSettings, ModelSpec, RunConfig, load_config, parse_run_date

__all__ = [
    "LearnRefused",
    "LearnSummary",
    "add_arguments",
    "bootstrap_figures",
    "execute",
    "nested_out_of_fold_scores",
    "run",
    "sample_prompts",
]

ROLES = ("strong", "weak")
SAMPLE_FILE = "sample.parquet"
REPORT_FILE = "learn_report.json"
#: The families learn can train: the ones the config's `learn.routers` allows (one list, in config.py).
LEARN_FAMILIES: tuple[str, ...] = typing.get_args(typing.get_args(LearnSettings.model_fields["routers"].annotation)[0])


class LearnRefused(RuntimeError):
    """The learning run or the promotion is refused (cost over --max-usd, a router that learned nothing)."""


# -- 1. the sample ------------------------------------------------------------------------------------

def _hash(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def sample_prompts(prompts: pd.DataFrame, n: int, seed: int = 0, stratify_by: str | None = None) -> pd.DataFrame:
    """`n` rows chosen by the hash of prompt_id: identical prompt texts once (the one with the smallest
    hash), and with `stratify_by` an even share of each stratum (round robin in hash order)."""
    df = prompts.assign(_h=[_hash(seed, str(p)) for p in prompts["prompt_id"]])
    text = df["prompt"].fillna("") + "\x00" + df["messages_json"].fillna("") + "\x00" + df["system"].fillna("")
    df = df.assign(_text=text).sort_values("_h").drop_duplicates("_text", keep="first")
    if stratify_by is None:
        picked = df.head(n)
    else:
        df = df.assign(_rank=df.groupby(stratify_by, dropna=False).cumcount())
        picked = df.sort_values(["_rank", "_h"]).head(n)
    return picked.drop(columns=[c for c in ("_h", "_text", "_rank") if c in picked.columns]).reset_index(drop=True)


def _read_prompts(config: RunConfig, run_date: date) -> pd.DataFrame:
    """The run date's validated prompts (validated now when `validate` has not run)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    from routellm_batch.ledger import filesystem_for

    uri = f"{config.table_uri('prompts')}/run_date={run_date.isoformat()}"
    fs, path = filesystem_for(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        from routellm_batch.stages import validate

        print(validate.execute(config, run_date).render(), flush=True)
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table(
        columns=["prompt_id", "prompt", "messages", "system", "max_tokens"]
    )
    df = table.to_pandas()
    df["messages_json"] = [None if m is None else json.dumps(list(m), default=str) for m in df["messages"]]
    return df


def _input_columns(config: RunConfig, run_date: date, columns: Sequence[str]) -> pd.DataFrame:
    """The user columns the prompts table does not carry (the reference, the stratum), by prompt_id."""
    import pyarrow.dataset as ds

    from routellm_batch.ledger import filesystem_for

    id_col = config.input.columns.prompt_id
    fs, path = filesystem_for(config.input.uri_for(run_date))
    dataset = ds.dataset(path, filesystem=fs, format=config.input.format)
    missing = [c for c in (id_col, *columns) if c not in dataset.schema.names]
    if missing:
        raise ConfigError(f"learn: input column(s) {missing} not in {config.input.uri_for(run_date)}")
    df = dataset.to_table(columns=[id_col, *columns]).to_pandas()
    df[id_col] = df[id_col].astype(str)
    return df.drop_duplicates(id_col, keep="first").rename(columns={id_col: "prompt_id"})


def _sample(config: RunConfig, learn: LearnSettings, run_date: date, n: int, out: Path) -> pd.DataFrame:
    path = out / SAMPLE_FILE
    if path.is_file():
        return pd.read_parquet(path)
    prompts = _read_prompts(config, run_date)
    extra = [c for c in (learn.reference.column if learn.reference else None, learn.stratify_by) if c]
    if extra:
        prompts = prompts.merge(_input_columns(config, run_date, sorted(set(extra))), on="prompt_id", how="left")
    sample = sample_prompts(prompts, n, learn.seed, learn.stratify_by)
    if len(sample) < n:
        print(f"learn: only {len(sample)} distinct valid prompts for run date {run_date}; sampling all of them")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    sample.drop(columns=["messages"]).to_parquet(tmp, index=False)
    tmp.replace(path)  # the sample is fixed once written whole
    return pd.read_parquet(path)


# -- 2. cost ------------------------------------------------------------------------------------------

def _request_parts(row: Any) -> dict[str, Any]:
    """prompt / messages / system of a sample row (missing ones None)."""
    messages = row.get("messages_json")
    return {
        "prompt": row["prompt"] if isinstance(row["prompt"], str) else None,
        "messages": json.loads(messages) if isinstance(messages, str) else None,
        "system": row["system"] if isinstance(row.get("system"), str) else None,
    }


def _request_tokens(row: Any) -> int:
    from routellm_batch.providers.pricing import estimate_request_tokens

    return estimate_request_tokens(**_request_parts(row))


def estimate_usd(config: RunConfig, learn: LearnSettings, sample: pd.DataFrame) -> Decimal:
    """The whole learning run at batch prices, every output at its max_tokens (an upper estimate)."""
    from routellm_batch.providers.pricing import batch_discount, estimate_tokens, price_table_for

    prices, discount = price_table_for(config.pricing), batch_discount(config.pricing)
    tokens = [_request_tokens(row) for _, row in sample.iterrows()]
    total = Decimal(0)
    for spec in (config.strong, config.weak):
        total += sum((prices.cost(spec.model, t, spec.max_tokens, discount=discount) for t in tokens), Decimal(0))
    if learn.judge is not None:
        from routellm_batch.labels import JUDGE_KEYS, judge_request

        judge, mode = learn.judge.model, learn.judge.mode
        # Each judge request: its instructions and markers, the question, and one or both answers at max_tokens.
        key = JUDGE_KEYS[mode][0]
        template = sum(estimate_tokens(t) for t in judge_request(mode, key, "", "", ""))
        answers = config.strong.max_tokens + (config.weak.max_tokens if mode == "pairwise" else 0)
        per = [t + template + answers for t in tokens]
        total += len(JUDGE_KEYS[mode]) * sum(
            (prices.cost(judge.model, t, judge.max_tokens, discount=discount) for t in per), Decimal(0))
    return total


def _cost(config: RunConfig, model: str, rows: pd.DataFrame) -> np.ndarray:
    from routellm_batch.providers.pricing import batch_discount, price_table_for

    price = price_table_for(config.pricing).price(model)
    discount = batch_discount(config.pricing)
    return np.array([float(price.cost(int(i or 0), int(o or 0), discount))
                     for i, o in zip(rows["input_tokens"].fillna(0), rows["output_tokens"].fillna(0), strict=True)])


# -- 3. batches ---------------------------------------------------------------------------------------

@contextmanager
def _sandboxed(config: RunConfig, learn: LearnSettings) -> Iterator[tuple[RunConfig, LearnSettings]]:
    """With `sandbox.enabled`: serve the batch APIs on 127.0.0.1 for both models and the judge."""
    if not config.sandbox.enabled:
        yield config, learn
        return
    import os

    from routellm_batch.sandbox.server import SandboxServer

    with SandboxServer.from_settings(config.sandbox) as server:
        urls = {"openai": server.openai_base_url, "anthropic": server.anthropic_base_url}

        def local(spec: ModelSpec) -> ModelSpec:
            return spec.model_copy(update={"base_url": urls[spec.provider]})

        specs = [config.strong, config.weak] + ([learn.judge.model] if learn.judge else [])
        added = [s.api_key_env for s in specs if s.api_key_env not in os.environ]
        os.environ.update({name: "sandbox" for name in added})  # the sandbox only checks that a key is sent
        try:
            live = config.model_copy(update={"strong": local(config.strong), "weak": local(config.weak)})
            if learn.judge is not None:
                learn = learn.model_copy(update={"judge": learn.judge.model_copy(update={"model": local(learn.judge.model)})})
            yield live, learn
        finally:
            for name in added:
                os.environ.pop(name, None)


def _tag(out: Path) -> str:
    return hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]


def _batch_config(config: RunConfig, out: Path, role: str, spec: ModelSpec) -> RunConfig:
    """A run of its own for one role: its own output root below DIR and a job name derived from DIR, so
    that two learning runs never adopt each other's batches, and the same DIR always resumes."""
    return config.model_copy(update={
        "job_name": f"{config.job_name[:20]}-learn{_tag(out)}-{role}",
        "output_root": str((out / "batches" / role).resolve()),
        "strong": spec,
        "weak": spec,
    })


def _answer(config: RunConfig, run_date: date, rows: pd.DataFrame) -> pd.DataFrame:
    """Every row answered by `config.strong` through submit / wait / collect; returns the responses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from routellm_batch.schemas import arrow_schema
    from routellm_batch.stages import collect, submit, wait

    routed_dir = Path(config.table_uri("routed")) / f"run_date={run_date.isoformat()}" / "queue=strong"
    target = routed_dir / "part-00000.parquet"
    if not target.is_file():
        spec = config.strong
        records = []
        for _, row in rows.iterrows():
            max_tokens = row.get("max_tokens")
            records.append({
                "run_id": config.run_id(run_date), "prompt_id": str(row["prompt_id"]), **_request_parts(row),
                "max_tokens": None if max_tokens is None or pd.isna(max_tokens) else int(max_tokens),
                "strong_win_prob": 1.0, "model": spec.model, "provider": spec.provider, "router": "learn",
                "threshold": 0.0, "est_input_tokens": _request_tokens(row),
            })
        schema = pa.schema([f for f in arrow_schema("routed") if f.name not in ("run_date", "queue")])
        routed_dir.mkdir(parents=True, exist_ok=True)
        tmp = routed_dir / ".part-00000.parquet.tmp"
        pq.write_table(pa.Table.from_pylist(records, schema=schema), tmp)
        tmp.replace(target)
        (routed_dir.parent / "queue=weak").mkdir(exist_ok=True)
    print(submit.execute(config, run_date).render(), flush=True)
    print(wait.execute(config, run_date).render(), flush=True)
    summary = collect.execute(config, run_date)
    print(summary.render(), flush=True)
    if not summary.done:
        raise RuntimeError(f"learn: {config.run_id(run_date)} not finished; run the same command again")
    return pd.read_parquet(summary.responses_uri)


def _answers(config: RunConfig, out: Path, run_date: date, sample: pd.DataFrame) -> pd.DataFrame:
    cols = ["prompt_id", "status", "response_text", "error_message", "input_tokens", "output_tokens"]
    for role in ROLES:
        spec = config.strong if role == "strong" else config.weak
        got = _answer(_batch_config(config, out, role, spec), run_date, sample)[cols]
        got = got.assign(**{f"{role}_cost_usd": _cost(config, spec.model, got)}).drop(columns=["input_tokens", "output_tokens"])
        sample = sample.merge(got.rename(columns={c: f"{role}_{c}" for c in cols[1:]}), on="prompt_id", how="left")
    return sample


# -- 4. labels ----------------------------------------------------------------------------------------

def _question(row: pd.Series) -> str:
    if isinstance(row["prompt"], str):
        return row["prompt"]
    messages = json.loads(row["messages_json"])
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)


def _label(config: RunConfig, learn: LearnSettings, out: Path, run_date: date, rows: pd.DataFrame) -> pd.DataFrame:
    from routellm_batch import labels as L

    answered = (rows["strong_status"] == "succeeded") & (rows["weak_status"] == "succeeded")
    rows = rows.assign(strong_score=np.nan, weak_score=np.nan, label_error=None, judge_text=None, judge_cost_usd=0.0)
    for i in np.flatnonzero(~answered.to_numpy()):
        bad = [r for r in ROLES if rows.at[i, f"{r}_status"] != "succeeded"]
        rows.at[i, "label_error"] = "; ".join(
            f"{r} answer {rows.at[i, f'{r}_status']}: {rows.at[i, f'{r}_error_message']}" for r in bad)
    if learn.reference is not None:
        ref = learn.reference
        for i in np.flatnonzero(answered.to_numpy()):
            for role in ROLES:
                rows.at[i, f"{role}_score"] = float(L.match_reference(
                    rows.at[i, f"{role}_response_text"], rows.at[i, ref.column], ref.matcher,
                    pattern=ref.pattern, field=ref.field, tolerance=ref.tolerance))
        return rows
    assert learn.judge is not None
    mode, keys = learn.judge.mode, L.JUDGE_KEYS[learn.judge.mode]
    requests = []
    for i in np.flatnonzero(answered.to_numpy()):
        row = rows.iloc[i]
        for key in keys:
            system, prompt = L.judge_request(mode, key, _question(row), row["strong_response_text"], row["weak_response_text"])
            requests.append({"prompt_id": f"{row['prompt_id']}~{key}", "prompt": prompt, "system": system,
                             "messages_json": None, "max_tokens": None})
    judged = _answer(_batch_config(config, out, "judge", learn.judge.model), run_date, pd.DataFrame(requests))
    judged = judged.assign(cost=_cost(config, learn.judge.model.model, judged))
    by_id = {pid: r for pid, r in zip(judged["prompt_id"], judged.to_dict("records"), strict=True)}
    for i in np.flatnonzero(answered.to_numpy()):
        pid = rows.at[i, "prompt_id"]
        got = {k: by_id.get(f"{pid}~{k}") for k in keys}
        texts = {k: (r["response_text"] if r and r["status"] == "succeeded" else None) for k, r in got.items()}
        rows.at[i, "judge_text"] = json.dumps(texts)
        rows.at[i, "judge_cost_usd"] = sum(r["cost"] for r in got.values() if r)
        failed = [f"judge request {k} {r['status']}: {r['error_message']}" for k, r in got.items()
                  if r and r["status"] != "succeeded"]
        outcome = "; ".join(failed) if failed else L.judge_label(mode, texts)
        if isinstance(outcome, str):
            rows.at[i, "label_error"] = outcome
        else:
            rows.at[i, "strong_score"], rows.at[i, "weak_score"] = outcome
    return rows


# -- 4b. the labelled pool (routellm_batch.labels_pool, which the nightly audit appends to) ----------

def _label_source(learn: LearnSettings) -> str:
    return f"reference/{learn.reference.matcher}" if learn.reference is not None else f"judge/{learn.judge.mode}"  # type: ignore[union-attr]


def _to_pool(config: RunConfig, learn: LearnSettings, run_date: date, out: Path, rows: pd.DataFrame) -> None:
    """This run's labelled prompts into the job's pool (its own file, replaced by a re-run of the same DIR)."""
    from routellm_batch.labels_pool import write_pool_part
    from routellm_batch.providers.pricing import stored_usd

    def usd(value: Any) -> Decimal:
        return stored_usd(Decimal(repr(float(value)))) if pd.notna(value) else Decimal(0)

    write_pool_part(config, run_date, f"learn-{_tag(out)}", [{
        "prompt_id": r["prompt_id"], "source": "learn", **_request_parts(r), "label_source": _label_source(learn),
        "strong_model": config.strong.model, "weak_model": config.weak.model,
        "strong_answer": r["strong_response_text"], "weak_answer": r["weak_response_text"],
        "strong_label": r["strong_score"], "weak_label": r["weak_score"],
        "judge_model": learn.judge.model.model if learn.judge is not None else None,
        **{f"{k}_cost_usd": usd(r[f"{k}_cost_usd"]) for k in ("strong", "weak", "judge")},
    } for _, r in rows[rows["label_error"].isna()].iterrows()])


def _with_pool(config: RunConfig, learn: LearnSettings, rows: pd.DataFrame) -> pd.DataFrame:
    """The sample's rows and the pool's labelled prompts of this job (labelled the same way, by the same two
    models) that the sample does not hold already (by request text): the nightly audit's, earlier runs'."""
    from routellm_batch.labels_pool import read_pool

    pool = read_pool(config)
    if pool is None:
        print(f"learn: the labelled pool {config.table_uri('labels')} is empty", flush=True)
        return rows.assign(source="sample")
    df = pool.to_pandas()
    df = df[(df["label_source"] == _label_source(learn)) & (df["strong_model"] == config.strong.model)
            & (df["weak_model"] == config.weak.model)]
    extra = pd.DataFrame({
        "prompt_id": df["prompt_id"], "prompt": df["prompt"], "system": df["system"],
        "messages_json": [None if m is None else json.dumps(list(m), default=str) for m in df["messages"]],
        "strong_status": "succeeded", "weak_status": "succeeded", "label_error": None, "source": "pool",
        "strong_response_text": df["strong_answer"], "weak_response_text": df["weak_answer"],
        "strong_score": df["strong_label"], "weak_score": df["weak_label"], "judge_cost_usd": 0.0,
        "strong_cost_usd": df["strong_cost_usd"].astype(float), "weak_cost_usd": df["weak_cost_usd"].astype(float),
    }).sort_values("prompt_id", kind="stable")

    def text(f: pd.DataFrame) -> pd.Series:
        return f["prompt"].fillna("") + "\x00" + f["messages_json"].fillna("") + "\x00" + f["system"].fillna("")

    keys = text(extra)
    extra = extra[~keys.isin(set(text(rows))) & ~keys.duplicated()]
    print(f"learn: {len(extra)} labelled prompt(s) added from the pool {config.table_uri('labels')}", flush=True)
    return pd.concat([rows.assign(source="sample"), extra], ignore_index=True)


# -- 5. training and figures ---------------------------------------------------------------------------

def _fit_and_score(kind: str, seed: int, embedders: dict[str, Any], options: dict[str, dict] | None = None):
    from routellm_batch.evaluation import evaluation_embedder, train_for_evaluation, training_battles

    if kind not in embedders:
        embedders[kind] = evaluation_embedder(kind)

    def fit_and_score(train, held_out: Sequence[str]) -> np.ndarray:
        router = train_for_evaluation(kind, training_battles(train), strong_model=train.strong_model,
                                      weak_model=train.weak_model, seed=seed, embedder=embedders[kind],
                                      **(options or {}).get(kind, {}))
        return router.score(list(held_out))

    return fit_and_score


def _choose(outcomes, kinds: Sequence[str], folds: int, seed: int, embedders: dict[str, Any],
            options: dict[str, dict] | None = None) -> tuple[str, dict[str, float]]:
    """The family with the best cross-validated APGR on `outcomes` (one family: no contest)."""
    from routellm_batch.evaluation import apgr, out_of_fold_scores, routing_curve

    if len(kinds) == 1:
        return kinds[0], {}
    found = {}
    for kind in kinds:
        scores = out_of_fold_scores(outcomes, _fit_and_score(kind, seed, embedders, options), folds, seed + 1)
        found[kind] = apgr(routing_curve(scores, outcomes))
    return max(kinds, key=lambda k: (np.nan_to_num(found[k], nan=-1.0), -kinds.index(k))), found


def nested_out_of_fold_scores(outcomes, kinds: Sequence[str], folds: int, inner_folds: int, seed: int,
                              embedders: dict[str, Any] | None = None,
                              options: dict[str, dict] | None = None) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold scores, and the family picked in each outer fold: chosen by inner cross-validation on
    that fold's training part only, so the held-out prompts never influence the choice."""
    from routellm_batch.evaluation import fold_ids

    embedders = {} if embedders is None else embedders
    ids = fold_ids(outcomes.prompts, folds, seed)
    scores = np.full(len(outcomes), np.nan)
    picked = []
    for k in range(folds):
        held, train = np.flatnonzero(ids == k), outcomes.subset(np.flatnonzero(ids != k))
        kind, _ = _choose(train, kinds, inner_folds, seed, embedders, options)
        picked.append(kind)
        scores[held] = _fit_and_score(kind, seed, embedders, options)(train, [outcomes.prompts[i] for i in held])
    return scores, picked


def _figures(curve) -> dict[str, float]:
    from routellm_batch.evaluation import RouterFigures

    f = RouterFigures.from_curve("", curve)
    return {"apgr": f.apgr, "cpt50": f.cpt50, "cpt80": f.cpt80, "strong_share_at_95pct": f.share_at_95pct_strong_quality,
            "usd_at_95pct": f.usd_at_95pct_strong_quality}


def bootstrap_figures(outcomes, scores: dict[str, list[np.ndarray]], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Each router's figures with a 95% percentile interval over prompts resampled with replacement
    (one resample of prompts serves every router, so their differences are paired)."""
    from routellm_batch.evaluation import mean_curve, routing_curve

    rng = np.random.default_rng(seed)
    n = len(outcomes)
    draws: dict[str, list[dict[str, float]]] = {name: [] for name in scores}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        sub = outcomes.subset(idx)
        if not sub.strong.mean() > sub.weak.mean():
            continue
        for name, sets in scores.items():
            draws[name].append(_figures(mean_curve([routing_curve(s[idx], sub) for s in sets])))
    out: dict[str, dict[str, Any]] = {}
    for name, sets in scores.items():
        point = _figures(mean_curve([routing_curve(s, outcomes) for s in sets]))
        entry: dict[str, Any] = {}
        for metric, value in point.items():
            vals = np.array([d[metric] for d in draws[name]], dtype=float)
            vals = vals[np.isfinite(vals)]
            low, high = (np.percentile(vals, [2.5, 97.5]) if vals.size else (math.nan, math.nan))
            entry[metric] = {"value": value, "ci95": [float(low), float(high)]}
        out[name] = entry
    return out


def _configured_scores(config: RunConfig, prompts: Sequence[str]) -> tuple[str, np.ndarray]:
    from routellm_batch.routers.checkpoint import load_router

    router = load_router(config.router, device="cpu")
    return f"configured ({config.router.kind})", np.asarray(router.score(list(prompts)), dtype=float)


def _thresholds(learn: LearnSettings, curve, final_scores: np.ndarray, valid_rows: int) -> dict[str, Any]:
    """The strong share (and its score threshold on the final router) meeting the target quality and the budget."""
    from routellm_batch.evaluation import share_at_quality

    def at(share: float) -> dict[str, float]:
        if not math.isfinite(share):
            return {"strong_fraction": math.nan, "threshold": math.nan}
        k = int(math.ceil(share * len(final_scores)))
        ordered = np.sort(final_scores)[::-1]
        return {"strong_fraction": share, "threshold": float(ordered[k - 1]) if k > 0 else 1.0}

    out: dict[str, Any] = {
        "target_quality": {"share_of_all_strong": learn.target_quality,
                           **at(share_at_quality(curve, learn.target_quality * curve.quality_strong))}
    }
    if learn.budget_usd is not None and curve.cost_usd is not None:
        per_prompt = curve.cost_usd / (len(curve.share) - 1)
        affordable = np.flatnonzero(per_prompt * valid_rows <= learn.budget_usd)
        share = float(curve.share[affordable[-1]]) if affordable.size else math.nan
        out["budget"] = {"budget_usd": learn.budget_usd, "prompts": valid_rows, **at(share),
                         "quality": float(curve.quality[affordable[-1]]) if affordable.size else math.nan}
    return out


# -- the stage ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LearnSummary:
    out_dir: str
    estimated_usd: float
    labelled: int
    label_errors: int
    router: str
    report: dict[str, Any]
    promoted: bool

    def render(self) -> str:
        f = self.report["figures"]
        lines = [f"learn: {self.labelled} labelled prompt(s), {self.label_errors} error row(s); router {self.router} "
                 f"-> {self.out_dir}/checkpoint", "  out-of-fold on the sample (95% bootstrap interval):"]
        for name, m in f.items():
            def fmt(key: str, pct: bool = False) -> str:
                v, (lo, hi) = m[key]["value"], m[key]["ci95"]
                s = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.3f}")
                return f"{s(v)} [{s(lo)}, {s(hi)}]" if math.isfinite(v) else "n/a"
            usd = m["usd_at_95pct"]["value"]
            lines.append(f"    {name:<28} APGR {fmt('apgr')}  CPT(50%) {fmt('cpt50', True)}  CPT(80%) {fmt('cpt80', True)}"
                         f"  strong share @95% {fmt('strong_share_at_95pct', True)}"
                         + (f"  USD @95% {usd:.4f}" if math.isfinite(usd) else ""))
        t = self.report["thresholds"]["target_quality"]
        lines.append(f"  {100 * t['share_of_all_strong']:.0f}% of all-strong quality: strong_fraction "
                     f"{t['strong_fraction']:.2f} (threshold {t['threshold']:.4f})")
        if "budget" in self.report["thresholds"]:
            b = self.report["thresholds"]["budget"]
            lines.append(f"  budget {b['budget_usd']} USD over {b['prompts']} prompts: strong_fraction {b['strong_fraction']:.2f}")
        lines.append(f"  {self.report['promotion']['decision']}")
        return "\n".join(lines)


def _promotion(report: dict[str, Any], learned: str) -> tuple[bool, str]:
    f = report["figures"]
    low = f[learned]["apgr"]["ci95"][0]
    rand = next(v for k, v in f.items() if k.startswith("random"))["apgr"]["value"]
    length = f["length"]["apgr"]["value"]
    ok = math.isfinite(low) and low > rand and low > length
    figures = f"APGR lower bound {low:.3f} vs random {rand:.3f} and length {length:.3f}"
    return ok, figures


def execute(
    config: RunConfig,
    sample_size: int,
    out_dir: str | Path,
    run_date: date,
    *,
    max_usd: float | None = None,
    router: str | None = None,
    promote: bool | None = None,
    labels_from_pool: bool = False,
) -> LearnSummary:
    from routellm_batch.evaluation import (
        PairedOutcomes,
        baseline_scores,
        evaluate_scores,
        fold_ids,
        plot_curves,
        routing_curve,
        training_battles,
        within_fold_ranks,
    )
    from routellm_batch.routers.training import train_router

    learn = config.learn
    if learn is None:
        raise ConfigError("learn: the config has no `learn:` section (reference or judge labels)")
    if router is not None and router not in LEARN_FAMILIES:
        raise ConfigError(f"learn: --router {router!r}: trainable families are {', '.join(LEARN_FAMILIES)}")
    if sample_size < 2 * learn.folds:
        raise ConfigError(f"learn: --sample {sample_size} is too small for {learn.folds} folds")
    out = Path(out_dir)
    plan = out / "learn_plan.json"
    if plan.is_file():  # a resumed run keeps its run date (and so its batches' run ids) and its sample
        run_date = date.fromisoformat(json.loads(plan.read_text())["run_date"])
    sample = _sample(config, learn, run_date, sample_size, out)
    plan.write_text(json.dumps({"run_date": run_date.isoformat(), "sample": len(sample)}))

    estimate = estimate_usd(config, learn, sample)
    print(f"learn: {len(sample)} prompts; estimated cost of the whole learning run (both answers"
          f"{' and the judge' if learn.judge else ''}, batch prices, outputs at max_tokens): {estimate:.4f} USD", flush=True)
    if max_usd is not None and estimate > Decimal(str(max_usd)):
        raise LearnRefused(f"learn: estimated {estimate:.4f} USD is over --max-usd {max_usd}; nothing submitted")

    with _sandboxed(config, learn) as (live, live_learn):
        rows = _answers(live, out, run_date, sample)
        rows = _label(live, live_learn, out, run_date, rows)
    _to_pool(config, learn, run_date, out, rows)
    rows = _with_pool(config, learn, rows) if labels_from_pool else rows.assign(source="sample")
    ok = rows["label_error"].isna().to_numpy()
    good = rows[ok].reset_index(drop=True)
    if len(good) < 2 * learn.folds:
        raise LearnRefused(f"learn: only {len(good)} prompt(s) labelled; see {out / 'labels.csv'}")
    prompts = [_question(r) for _, r in good.iterrows()]
    outcomes = PairedOutcomes(
        prompts=tuple(prompts), strong=good["strong_score"].to_numpy(float), weak=good["weak_score"].to_numpy(float),
        strong_model=config.strong.model, weak_model=config.weak.model,
        strong_cost_usd=good["strong_cost_usd"].to_numpy(float), weak_cost_usd=good["weak_cost_usd"].to_numpy(float),
    )
    kinds = [router] if router else list(learn.routers)
    embedders: dict[str, Any] = {}
    options = {"bert": {"base_model": learn.encoder, "device": "auto"}} if learn.encoder else {}  # per family
    oof, picked = nested_out_of_fold_scores(outcomes, kinds, learn.folds, learn.inner_folds, learn.seed, embedders,
                                            options)
    learned = f"learned ({'/'.join(sorted(set(picked)))})"
    conf_name, conf_scores = _configured_scores(config, prompts)
    # Each outer fold's model has its own offset: every score set (baselines too) is ranked within its fold
    # before pooling, so folds are never ranked against each other (evaluation.within_fold_ranks).
    ids = fold_ids(outcomes.prompts, learn.folds, learn.seed)
    evaluation = evaluate_scores(outcomes, {learned: oof, conf_name: conf_scores}, folds=ids)
    score_sets = {learned: [oof], conf_name: [conf_scores]}
    for name, sets in baseline_scores(outcomes.prompts, outcomes).items():
        score_sets[f"random (mean of {len(sets)} seeds)" if name == "random" else name] = sets
    ranked = {name: [within_fold_ranks(s, ids) for s in sets] for name, sets in score_sets.items()}
    figures = bootstrap_figures(outcomes, ranked, learn.bootstrap, learn.seed)

    final_kind, inner = _choose(outcomes, kinds, learn.inner_folds, learn.seed, embedders, options)
    checkpoint = out / "checkpoint"
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    final = train_router(final_kind, training_battles(outcomes), checkpoint, seed=learn.seed, strong_model=config.strong.model,
                         weak_model=config.weak.model, **options.get(final_kind, {}))
    final_scores = np.asarray(final.score(prompts), dtype=float)

    rows["oof_score"] = np.nan
    rows.loc[ok, "oof_score"] = oof
    rows.loc[ok, "configured_score"] = conf_scores
    rows.drop(columns=["messages_json"]).to_csv(out / "labels.csv", index=False)
    plot_curves(evaluation, out / "learn_curves.png",
                title=f"{config.job_name}: {len(good)} labelled prompts, out-of-fold (learned) vs baselines")

    report: dict[str, Any] = {
        "job_name": config.job_name, "run_date": run_date.isoformat(), "sample": len(sample), "labelled": len(good),
        "label_errors": int((~ok).sum()), "labels": "reference" if learn.reference else f"judge/{learn.judge.mode}",
        "strong_model": config.strong.model, "weak_model": config.weak.model,
        "quality_strong": float(outcomes.strong.mean()), "quality_weak": float(outcomes.weak.mean()),
        "estimated_usd": float(estimate),
        "from_pool": int((rows["source"] == "pool").sum()),
        "spent_usd": float(rows.loc[rows["source"] == "sample", ["strong_cost_usd", "weak_cost_usd", "judge_cost_usd"]].fillna(0).to_numpy().sum()),
        "router": final_kind, "families_per_fold": picked, "inner_cv_apgr": inner, "folds": learn.folds,
        "figures": figures, "thresholds": _thresholds(learn, routing_curve(oof, outcomes), final_scores, len(sample)),
        "notes": evaluation.notes,
    }
    passed, numbers = _promotion(report, learned)
    wanted = learn.promote if promote is None else promote
    if not wanted:
        decision = f"not promoted (use --promote); {numbers}"
    elif passed:
        decision = f"promoted: {numbers}; set router: {{kind: {final_kind}, checkpoint: {checkpoint.resolve()}}}"
    else:
        decision = f"promotion REFUSED: the learned router does not beat random and length ({numbers})"
    report["promotion"] = {"requested": wanted, "passed": passed, "decision": decision}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=float))
    if wanted and passed:
        shutil.copy(out / REPORT_FILE, checkpoint / REPORT_FILE)  # the run sees its router was measured here
    summary = LearnSummary(str(out), float(estimate), len(good), int((~ok).sum()), final_kind, report, wanted and passed)
    if wanted and not passed:
        raise LearnRefused(summary.render())
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config YAML with a `learn:` section")
    parser.add_argument("--sample", type=int, required=True, help="how many valid prompts to label")
    parser.add_argument("--out", required=True, help="output folder (the same folder resumes a crashed run)")
    parser.add_argument("--run-date", default=None, help="YYYY-MM-DD of the input to sample (default: today)")
    parser.add_argument("--max-usd", type=float, default=None, help="refuse to start above this estimated cost")
    parser.add_argument("--router", default=None, help=f"train this family ({', '.join(LEARN_FAMILIES)}) instead of choosing")
    parser.add_argument("--promote", action="store_true", default=None, help="promote when it beats random and length")
    parser.add_argument("--labels-from-pool", action="store_true",
                        help="also train on the job's labelled pool (the nightly audit's labels, earlier learning runs')")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    run_date = parse_run_date(args.run_date) if args.run_date else date.today()
    try:
        summary = execute(config, args.sample, args.out, run_date, max_usd=args.max_usd, router=args.router,
                          promote=args.promote, labels_from_pool=args.labels_from_pool)
    except LearnRefused as exc:
        print(str(exc))
        return 3
    print(summary.render())
    return 0
