"""Router training data: per-model outcomes, battles, and the conversion between them.

Two table shapes (pandas):

- outcomes (wide): one row per prompt; `prompt`, optional metadata columns (METADATA_COLUMNS:
  `prompt_id`, `source`, ...), and one numeric column per model holding that model's quality on
  the prompt (1/0 correctness, a judge grade, a fractional score; NaN = not evaluated).
- battles: one row per (prompt, model pair): `prompt`, `model_a`, `model_b`,
  `winner` in {"model_a", "model_b", "tie"}, optional `source`, `weight`.

`outcomes_to_battles` labels as RouteLLM's golden-labeled data (shared/data/README.md): for a pair,
the model with the higher score wins; equal scores are a tie.

Loaders for the shared reference data (RouteLLM MMLU/GSM8K evals, LLMRouter train.json) and for
battle/outcome tables in Parquet, CSV, JSON Lines or JSON, with `load_training_data` telling them
apart by their columns.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "BATTLE_COLUMNS",
    "METADATA_COLUMNS",
    "ROUTELLM_STRONG",
    "ROUTELLM_WEAK",
    "Winner",
    "default_data_root",
    "shared_data_missing",
    "load_battles",
    "load_llmrouter_outcomes",
    "load_outcomes",
    "load_routellm_outcomes",
    "load_training_data",
    "outcome_models",
    "outcomes_to_battles",
    "read_table",
    "validate_battles",
]

Winner = Literal["model_a", "model_b", "tie"]
WINNERS: tuple[str, ...] = ("model_a", "model_b", "tie")
BATTLE_COLUMNS: tuple[str, ...] = ("prompt", "model_a", "model_b", "winner")
# Columns of an outcomes table that are not a model's score.
METADATA_COLUMNS = frozenset(
    {"prompt", "prompt_id", "source", "task", "task_name", "cluster_id", "split", "fold", "weight", "question", "query"}
)
ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_BENCHMARKS = ("mmlu", "gsm8k")
DATA_ROOT_ENV = "ROUTELLM_BATCH_DATA"
# The repository root (routellm_batch/routers/data.py -> three levels up).
_CHECKOUT = Path(__file__).resolve().parents[2]


class DataError(ValueError):
    """A training table that cannot be used; the message names the file, row or column."""


def default_data_root(data_root: str | Path | None = None) -> Path:
    """The shared reference data: `data_root` (a --data option), else $ROUTELLM_BATCH_DATA, else
    shared/data beside the checkout (CI clones the repository next to a shared/ folder)."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root)
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    return _CHECKOUT.parent / "shared" / "data"


def shared_data_missing(root: str | Path | None = None) -> str | None:
    """None when the shared reference data is at `root` (default: default_data_root()), else why not."""
    base = default_data_root(root)
    missing = [name for name in ("routellm_evals", "llmrouter") if not (base / name).is_dir()]
    if not missing:
        return None
    return f"shared reference data not found: {', '.join(str(base / m) for m in missing)} (set ${DATA_ROOT_ENV} or pass --data)"


# --------------------------------------------------------------------------- reading tables


def read_table(path: str | Path) -> pd.DataFrame:
    """A table from .parquet (file or dataset folder), .csv, .jsonl/.ndjson or .json (records)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        with open(path) as f:
            raw = json.load(f)
        if isinstance(raw, dict):
            raw = raw.get("data", raw.get("records", raw))
        if not isinstance(raw, list):
            raise DataError(f"{path}: expected a JSON list of records")
        return pd.DataFrame.from_records(raw)
    raise DataError(f"{path}: unknown table format {suffix!r} (use .parquet, .csv, .jsonl or .json)")


# --------------------------------------------------------------------------- battles


def validate_battles(battles: pd.DataFrame, where: str = "battles") -> pd.DataFrame:
    """Check and normalize a battles table; errors name the column or the first bad row."""
    missing = [c for c in BATTLE_COLUMNS if c not in battles.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; a battles table has {list(BATTLE_COLUMNS)}")
    df = battles.reset_index(drop=True).copy()
    for col in ("prompt", "model_a", "model_b"):
        bad = df[col].isna() | ~df[col].map(lambda v: isinstance(v, str) and v != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{where}: row {i}: column {col!r} must be a non-empty string, got {df[col].iloc[i]!r}")
    winner = df["winner"].astype(str).str.strip().str.lower()
    # RouteLLM's arena data also has "tie (bothbad)": a tie for training purposes.
    winner = winner.where(~winner.str.startswith("tie"), "tie")
    bad = ~winner.isin(WINNERS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: row {i}: winner {df['winner'].iloc[i]!r} is not one of {list(WINNERS)}")
    df["winner"] = winner
    same = df["model_a"] == df["model_b"]
    if same.any():
        i = int(np.flatnonzero(same.to_numpy())[0])
        raise DataError(f"{where}: row {i}: model_a and model_b are both {df['model_a'].iloc[i]!r}")
    if "weight" in df.columns:
        w = pd.to_numeric(df["weight"], errors="coerce")
        if w.isna().any() or (w < 0).any():
            i = int(np.flatnonzero((w.isna() | (w < 0)).to_numpy())[0])
            raise DataError(f"{where}: row {i}: weight must be a number >= 0")
        df["weight"] = w.astype(float)
    return df


def load_battles(path: str | Path) -> pd.DataFrame:
    return validate_battles(read_table(path), where=str(path))


# --------------------------------------------------------------------------- outcomes


def outcome_models(outcomes: pd.DataFrame) -> list[str]:
    """The model columns of an outcomes table: numeric or boolean columns that are not metadata."""
    models = []
    for col in outcomes.columns:
        if col in METADATA_COLUMNS or str(col).endswith("_response"):
            continue
        if pd.api.types.is_bool_dtype(outcomes[col]) or pd.api.types.is_numeric_dtype(outcomes[col]):
            models.append(str(col))
    return models


def _check_outcomes(outcomes: pd.DataFrame, where: str) -> list[str]:
    if "prompt" not in outcomes.columns:
        raise DataError(f"{where}: an outcomes table needs a 'prompt' column")
    models = outcome_models(outcomes)
    if len(models) < 2:
        raise DataError(
            f"{where}: an outcomes table needs at least two numeric model columns besides "
            f"{sorted(METADATA_COLUMNS)}; found {models}"
        )
    bad = outcomes["prompt"].isna() | ~outcomes["prompt"].map(lambda v: isinstance(v, str) and v != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{where}: row {i}: prompt must be a non-empty string")
    return models


def outcomes_to_battles(
    outcomes: pd.DataFrame,
    pairs: Iterable[tuple[str, str]] | None = None,
    where: str = "outcomes",
) -> pd.DataFrame:
    """One battle per prompt and model pair: the higher score wins, equal scores tie.

    `pairs` = [(model_a, model_b), ...] (default: every pair of model columns, in column order).
    A pair is skipped on a prompt where either score is missing. Metadata columns `source`,
    `prompt_id` and `weight` are carried over.
    """
    models = _check_outcomes(outcomes, where)
    pairs = list(itertools.combinations(models, 2)) if pairs is None else [tuple(p) for p in pairs]
    for a, b in pairs:
        for m in (a, b):
            if m not in models:
                raise DataError(f"{where}: pair ({a!r}, {b!r}): no model column {m!r}; models: {models}")
    carried = [c for c in ("prompt_id", "source", "weight") if c in outcomes.columns]
    scores = {m: pd.to_numeric(outcomes[m].astype("float64"), errors="coerce").to_numpy() for m in models}
    frames = []
    for a, b in pairs:
        sa, sb = scores[a], scores[b]
        ok = ~(np.isnan(sa) | np.isnan(sb))
        winner = np.where(sa > sb, "model_a", np.where(sa < sb, "model_b", "tie"))
        part = pd.DataFrame({"prompt": outcomes["prompt"].to_numpy()[ok], "model_a": a, "model_b": b, "winner": winner[ok]})
        for c in carried:
            part[c] = outcomes[c].to_numpy()[ok]
        frames.append(part)
    if not frames:
        return pd.DataFrame(columns=[*BATTLE_COLUMNS, *carried])
    return pd.concat(frames, ignore_index=True)


def _contaminated(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with open(path) as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def load_routellm_outcomes(
    benchmark: Literal["mmlu", "gsm8k"], root: str | Path | None = None, drop_contaminated: bool = True
) -> pd.DataFrame:
    """RouteLLM's eval outcomes (gpt-4-1106-preview vs Mixtral-8x7B), bools as 1.0/0.0.

    `root` is the shared data folder (holding routellm_evals/) or routellm_evals/ itself. Prompts in
    contaminated_prompts.jsonl are dropped, as RouteLLM does before scoring.
    Columns: prompt, source ("mmlu/<subject>" or "gsm8k"), the two model columns.
    """
    base = default_data_root(root)
    if (base / "routellm_evals").is_dir():
        base = base / "routellm_evals"
    if benchmark == "mmlu":
        files = sorted((base / "mmlu" / "responses").glob("mmlu_*.csv"))
        if not files:
            raise DataError(f"{base / 'mmlu' / 'responses'}: no mmlu_*.csv files")
        parts = []
        for f in files:
            part = pd.read_csv(f)
            part.insert(1, "source", "mmlu/" + f.stem.removeprefix("mmlu_"))
            parts.append(part)
        df = pd.concat(parts, ignore_index=True)
    elif benchmark == "gsm8k":
        f = base / "gsm8k" / "gsm8k_responses.csv"
        if not f.is_file():
            raise DataError(f"{f}: not found")
        df = pd.read_csv(f)
        df.insert(1, "source", "gsm8k")
    else:
        raise DataError(f"unknown RouteLLM benchmark {benchmark!r}; allowed: {list(ROUTELLM_BENCHMARKS)}")
    if drop_contaminated:
        df = df[~df["prompt"].isin(_contaminated(base / benchmark / "contaminated_prompts.jsonl"))]
    keep = ["prompt", "source", ROUTELLM_WEAK, ROUTELLM_STRONG]
    df = df[keep].reset_index(drop=True)
    for m in (ROUTELLM_WEAK, ROUTELLM_STRONG):
        df[m] = df[m].astype(float)
    return df


def load_llmrouter_outcomes(root: str | Path | None = None) -> pd.DataFrame:
    """LLMRouter's train.json: 9 open models' scores per prompt, with the task from query_train.jsonl.

    Columns: prompt, source ("llmrouter/<task>"), cluster_id, one float column per model.
    """
    base = default_data_root(root)
    if (base / "llmrouter").is_dir():
        base = base / "llmrouter"
    with open(base / "train.json") as f:
        records = json.load(f)
    tasks: dict[str, str] = {}
    query_file = base / "query_train.jsonl"
    if query_file.is_file():
        with open(query_file) as f:
            for line in f:
                q = json.loads(line)
                tasks.setdefault(q["query"], q["task_name"])
    return _expand_scores(pd.DataFrame.from_records(records), tasks)


def _expand_scores(df: pd.DataFrame, tasks: dict[str, str] | None = None) -> pd.DataFrame:
    """LLMRouter layout (question + scores dict) -> wide outcomes."""
    scores = pd.DataFrame.from_records(df["scores"].tolist()).astype(float)
    prompt = df["question"] if "question" in df.columns else df["prompt"]
    out = pd.DataFrame({"prompt": prompt.to_numpy()})
    out["source"] = ["llmrouter/" + (tasks or {}).get(q, "unknown") for q in out["prompt"]]
    if "cluster_id" in df.columns:
        out["cluster_id"] = df["cluster_id"].to_numpy()
    return pd.concat([out, scores[sorted(scores.columns)]], axis=1)


def load_outcomes(source: str | Path) -> pd.DataFrame:
    """Outcomes from a shared data set name ("mmlu", "gsm8k", "llmrouter") or a table file."""
    if str(source) in ROUTELLM_BENCHMARKS:
        return load_routellm_outcomes(str(source))  # type: ignore[arg-type]
    if str(source) == "llmrouter":
        return load_llmrouter_outcomes()
    df = read_table(source)
    return _as_outcomes(df, str(source))


def _as_outcomes(df: pd.DataFrame, where: str) -> pd.DataFrame:
    if "scores" in df.columns and df["scores"].map(lambda v: isinstance(v, dict)).all():
        return _expand_scores(df)
    for alias in ("question", "query"):
        if "prompt" not in df.columns and alias in df.columns:
            df = df.rename(columns={alias: "prompt"})
    _check_outcomes(df, where)
    return df


# --------------------------------------------------------------------------- one entry for training


def _is_battles(df: pd.DataFrame) -> bool:
    return {"model_a", "model_b", "winner"} <= set(df.columns)


def _sources_in(path: Path) -> list[pd.DataFrame] | None:
    """Battles of a shared-data folder (root, routellm_evals/, mmlu/, gsm8k/, llmrouter/), else None."""
    found: list[pd.DataFrame] = []
    evals = path / "routellm_evals" if (path / "routellm_evals").is_dir() else path
    if (evals / "mmlu" / "responses").is_dir():
        found.append(outcomes_to_battles(load_routellm_outcomes("mmlu", evals), where=str(evals / "mmlu")))
    if (evals / "gsm8k" / "gsm8k_responses.csv").is_file():
        found.append(outcomes_to_battles(load_routellm_outcomes("gsm8k", evals), where=str(evals / "gsm8k")))
    if (path / "responses").is_dir() and path.name == "mmlu":
        found.append(outcomes_to_battles(load_routellm_outcomes("mmlu", path.parent), where=str(path)))
    if (path / "gsm8k_responses.csv").is_file():
        found.append(outcomes_to_battles(load_routellm_outcomes("gsm8k", path.parent), where=str(path)))
    llm = path / "llmrouter" if (path / "llmrouter").is_dir() else path
    if (llm / "train.json").is_file():
        found.append(outcomes_to_battles(load_llmrouter_outcomes(llm), where=str(llm)))
    return found or None


def load_training_data(sources: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Battles from one or more sources (a list, or a comma-separated string), concatenated.

    Each source is: a shared data set name ("mmlu", "gsm8k", "llmrouter", "shared" = all three);
    a shared-data folder (its root, routellm_evals/, mmlu/, gsm8k/ or llmrouter/); or a table file
    (or Parquet folder) holding battles (model_a, model_b, winner columns) or per-model outcomes
    (a prompt column and >= 2 model score columns), told apart by its columns.
    """
    if isinstance(sources, (str, Path)):
        sources = [s for s in str(sources).split(",") if s.strip()]
    frames = []
    for source in sources:
        name = str(source).strip()
        if name in ROUTELLM_BENCHMARKS or name == "llmrouter":
            frames.append(outcomes_to_battles(load_outcomes(name), where=name))
            continue
        if name == "shared":
            name = str(default_data_root())
        path = Path(name)
        if path.is_dir():
            found = _sources_in(path)
            if found is not None:
                frames.extend(found)
                continue
        df = read_table(path)
        if _is_battles(df):
            frames.append(validate_battles(df, where=name))
        else:
            frames.append(outcomes_to_battles(_as_outcomes(df, name), where=name))
    if not frames:
        raise DataError("no training data given")
    if any("weight" in f.columns for f in frames):  # a source without weights counts each battle once
        frames = [f if "weight" in f.columns else f.assign(weight=1.0) for f in frames]
    return validate_battles(pd.concat(frames, ignore_index=True), where="training data")
