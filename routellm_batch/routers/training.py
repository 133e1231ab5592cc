"""Training routers: `train_router(kind, battles, out_dir, ...)`, the `routellm-batch train` command,
and the reproducible build of the router shipped in the package.

    routellm-batch train --router mf --data ../shared/data/routellm_evals --out ckpt/
    routellm-batch train --router sw_ranking --data battles.parquet --out ckpt/ --strong-model A --weak-model B
    routellm-batch train --router bert --data outcomes.csv --out ckpt/ --base-model /models/bert-base
    python -m routellm_batch.routers.training build-default     # rebuilds routers/default/

`--data` is a battles table, a per-model outcomes table (told apart by its columns), a shared-data
folder or name, or several of those separated by commas (see routers.data.load_training_data).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from routellm_batch.routers.base import Router
from routellm_batch.routers.embedders import CachingEmbedder, Embedder, build_embedder

__all__ = [
    "DEFAULT_EMBEDDERS",
    "TRAINERS",
    "add_arguments",
    "build_default_router",
    "main",
    "run",
    "train_router",
]

log = logging.getLogger(__name__)

#: The embedder each family trains with when none is given. mf gets cheap text statistics appended
#: (it standardizes its inputs); sw_ranking compares prompts by cosine similarity, which such
#: unscaled statistics would swamp, so it gets the plain embedding.
DEFAULT_EMBEDDERS: dict[str, str] = {"mf": "wordllama+features", "sw_ranking": "wordllama", "stacked": "wordllama",
                                   "embed_ridge": "wordllama"}


def _train_mf(battles, out_dir, *, seed, strong_model, weak_model, embedder, **options) -> Router:
    from routellm_batch.routers.mf import MatrixFactorizationRouter

    return MatrixFactorizationRouter.fit(
        battles, embedder, seed=seed, strong_model=strong_model, weak_model=weak_model, **options
    )


def _train_sw_ranking(battles, out_dir, *, seed, strong_model, weak_model, embedder, **options) -> Router:
    from routellm_batch.routers.sw_ranking import SWRankingRouter

    return SWRankingRouter.fit(
        battles, embedder, seed=seed, strong_model=strong_model, weak_model=weak_model, **options
    )


def _train_stacked(battles, out_dir, *, seed, strong_model, weak_model, embedder, **options) -> Router:
    # The stacked router computes its own prompt features beside the embedding.
    from routellm_batch.routers.stacked import StackedRouter

    return StackedRouter.fit(battles, embedder, seed=seed, strong_model=strong_model, weak_model=weak_model, **options)


def _train_embed_ridge(battles, out_dir, *, seed, strong_model, weak_model, embedder, **options) -> Router:
    from routellm_batch.routers.embed_ridge import EmbedRidgeRouter

    return EmbedRidgeRouter.fit(battles, embedder, seed=seed, strong_model=strong_model, weak_model=weak_model,
                                **options)


def _train_bert(battles, out_dir, *, seed, strong_model, weak_model, embedder, **options) -> Router:
    # The bert family brings its own encoder; an embedder does not apply.
    from routellm_batch.routers.bert import train_bert

    if embedder is not None:
        raise ValueError("router kind 'bert' fine-tunes its own encoder: --embedder does not apply (use --base-model)")
    base_model = options.pop("base_model", None)
    if base_model is None:
        raise ValueError("router kind 'bert' needs base_model (--base-model: a local encoder directory)")
    if out_dir is None:
        raise ValueError("router kind 'bert' writes its checkpoint while training: give an output directory")
    return train_bert(
        battles, out_dir, base_model=base_model, seed=seed, strong_model=strong_model, weak_model=weak_model, **options
    )


#: kind -> trainer(battles, out_dir, *, seed, strong_model, weak_model, embedder, **options) -> Router
TRAINERS: dict[str, Callable[..., Router]] = {
    "mf": _train_mf,
    "sw_ranking": _train_sw_ranking,
    "stacked": _train_stacked,
    "embed_ridge": _train_embed_ridge,
    "bert": _train_bert,
}
_SAVES_ITSELF = {"bert"}  # train_bert writes out_dir itself


def _resolve_embedder(kind: str, embedder: Embedder | dict | str | None, cache_dir: str | Path | None) -> tuple[Embedder, Embedder]:
    """(embedder to train with, embedder the returned router keeps).

    Training embeds every distinct prompt once through a caching wrapper (in memory, and on disk
    under `cache_dir`); the router keeps the plain embedder so that scoring never grows a cache.
    A caller's own Embedder instance (a CachingEmbedder for k-fold runs, say) is used as given.
    """
    if isinstance(embedder, Embedder):
        return embedder, embedder
    inner = build_embedder(embedder if embedder is not None else DEFAULT_EMBEDDERS[kind])
    return CachingEmbedder(inner, cache_dir), inner


def train_router(
    kind: str,
    battles: pd.DataFrame,
    out_dir: str | Path | None,
    seed: int = 0,
    strong_model: str | None = None,
    weak_model: str | None = None,
    embedder: Embedder | dict | str | None = None,
    **options: Any,
) -> Router:
    """Train a router of `kind` on a battles table; save it to `out_dir` when given; return it.

    mf/sw_ranking options: see mf_training.MFTrainingOptions and SWRankingRouter.fit; plus
    `embedding_cache_dir` (a folder for the embedding cache). bert: `base_model` and the options
    of routers.bert.train_bert. `strong_model`/`weak_model` choose the scored pair (default: the
    models winning the most and the fewest points).
    """
    if kind not in TRAINERS:
        raise ValueError(f"router kind {kind!r} cannot be trained here; trainable kinds: {', '.join(sorted(TRAINERS))}")
    cache_dir = options.pop("embedding_cache_dir", None)
    if kind in _SAVES_ITSELF:
        return TRAINERS[kind](
            battles, out_dir, seed=seed, strong_model=strong_model, weak_model=weak_model, embedder=embedder, **options
        )
    train_embedder, keep_embedder = _resolve_embedder(kind, embedder, cache_dir)
    started = time.perf_counter()
    router = TRAINERS[kind](
        battles, out_dir, seed=seed, strong_model=strong_model, weak_model=weak_model, embedder=train_embedder, **options
    )
    router.embedder = keep_embedder  # type: ignore[attr-defined]
    if out_dir is not None:
        router.save(out_dir)
    log.info("trained %s on %d battles in %.1fs%s", kind, len(battles), time.perf_counter() - started,
             f"; wrote {out_dir}" if out_dir is not None else "")
    return router


# --------------------------------------------------------------------------- the shipped router

DEFAULT_DIR = Path(__file__).parent / "default"
DEFAULT_SEED = 0
DEFAULT_OPTIONS: dict[str, Any] = {}

_NOTICE = """\
routellm_batch/routers/default: the router shipped with routellm-batch
=======================================================================

A matrix factorization router (routers/mf.py) over WordLlama embeddings with a few text
statistics appended (embedder spec in config.json), trained on public per-prompt outcomes of
LLMs. The default pair is strong = gpt-4-1106-preview, weak = mistralai/Mixtral-8x7B-Instruct-v0.1;
the other trained models (LLMRouter's nine open models) can be chosen with router.strong_model /
router.weak_model.

Rebuild (deterministic for the seed in config.json):
    python -m routellm_batch.routers.training build-default --data-root /path/to/shared/data

Training data (not copied here; only weights derived from them are):

1. RouteLLM evaluation data, github.com/lm-sys/RouteLLM at 0b64fda, routellm/evals/
   (mmlu/responses/*.csv, gsm8k/gsm8k_responses.csv; contaminated prompts dropped).
   Copyright LMSYS. Licensed under the Apache License, Version 2.0: LICENSE-routellm-evals.
   The MODEL_IDS table in routers/routellm_compat.py comes from the same repository
   (routellm/routers/matrix_factorization/model.py), same license.

2. LLMRouter data, github.com/ulab-uiuc/LLMRouter at 4e7a796, data/train.json and
   data/query_train.jsonl. Copyright (c) 2024 U Lab @UIUC. MIT License: LICENSE-llmrouter.
   Its battles are down-weighted (1/36 each: one prompt counts as much as one RouteLLM prompt).

Embeddings at run time come from the wordllama package (github.com/dleemiller/WordLlama,
MIT License), whose weights and tokenizer ship in its wheel; they are not copied here.
"""


def build_default_router(data_root: str | Path | None = None, out_dir: str | Path = DEFAULT_DIR, seed: int = DEFAULT_SEED) -> Router:
    """Train and write the shipped router (see _NOTICE), with its NOTICE and the data licenses."""
    from routellm_batch.routers import data as D

    root = Path(data_root) if data_root is not None else D.default_data_root()
    routellm = pd.concat(
        [D.outcomes_to_battles(D.load_routellm_outcomes(b, root), where=b) for b in D.ROUTELLM_BENCHMARKS],
        ignore_index=True,
    ).assign(weight=1.0)
    llmrouter = D.outcomes_to_battles(D.load_llmrouter_outcomes(root), where="llmrouter")
    pairs_per_prompt = llmrouter.groupby("prompt").size().max()
    llmrouter = llmrouter.assign(weight=1.0 / float(pairs_per_prompt))
    battles = pd.concat([routellm, llmrouter], ignore_index=True)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    router = train_router(
        "mf", battles, out_dir, seed=seed, strong_model=D.ROUTELLM_STRONG, weak_model=D.ROUTELLM_WEAK, **DEFAULT_OPTIONS
    )
    (out_dir / "NOTICE").write_text(_NOTICE)
    evals = root / "routellm_evals" if (root / "routellm_evals").is_dir() else root
    shutil.copyfile(evals / "LICENSE", out_dir / "LICENSE-routellm-evals")
    llm = root / "llmrouter" if (root / "llmrouter").is_dir() else root
    shutil.copyfile(llm / "LICENSE", out_dir / "LICENSE-llmrouter")
    return router


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router", required=True, choices=sorted(TRAINERS), help="router family to train")
    parser.add_argument(
        "--data", required=True,
        help="battles or per-model outcomes table (.parquet/.csv/.jsonl/.json), a shared-data folder, "
        "'mmlu' / 'gsm8k' / 'llmrouter' / 'shared'; several separated by commas",
    )
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strong-model", default=None, help="default strong model of the checkpoint")
    parser.add_argument("--weak-model", default=None, help="default weak model of the checkpoint")
    parser.add_argument("--base-model", default=None, help="bert: local directory (or hub name) of the encoder to fine-tune")
    parser.add_argument(
        "--embedder", default=None,
        help="mf/sw_ranking: wordllama[:DIM], hf:PATH_OR_NAME, openai[:MODEL], with optional '+features', or a JSON spec "
        f"(default: {DEFAULT_EMBEDDERS})",
    )
    parser.add_argument("--embedding-cache", default=None, help="folder for an on-disk embedding cache (mf/sw_ranking)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="a training option (e.g. epochs=30, weight_decay=0.01); VALUE is read as JSON when it parses",
    )


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def run(args: argparse.Namespace) -> int:
    from routellm_batch.routers.data import DataError, load_training_data

    try:
        options = _parse_options(args.option)
        if args.base_model is not None:
            if args.router != "bert":
                raise ValueError("--base-model applies to --router bert only")
            options["base_model"] = args.base_model
        if args.embedding_cache:
            options["embedding_cache_dir"] = args.embedding_cache
        battles = load_training_data(args.data)
        router = train_router(
            args.router, battles, args.out, seed=args.seed, strong_model=args.strong_model,
            weak_model=args.weak_model, embedder=args.embedder, **options,
        )
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"routellm-batch train: {exc}", file=sys.stderr)
        return 2
    models = getattr(router, "models", None)
    print(
        f"trained {args.router} on {len(battles)} battles"
        + (f" ({len(models)} models)" if models else "")
        + f"; strong={getattr(router, 'strong_model', '?')} weak={getattr(router, 'weak_model', '?')}; wrote {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m routellm_batch.routers.training build-default [...]`, or the train command's arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["build-default"]:
        parser = argparse.ArgumentParser(prog="python -m routellm_batch.routers.training build-default",
                                         description="Rebuild the router shipped in routellm_batch/routers/default.")
        parser.add_argument("--data-root", default=None, help="shared data folder (default: $ROUTELLM_BATCH_DATA, else shared/data beside the checkout)")
        parser.add_argument("--out", default=str(DEFAULT_DIR))
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
        args = parser.parse_args(argv[1:])
        router = build_default_router(args.data_root, args.out, args.seed)
        print(f"wrote {args.out}: {router.kind}, models {getattr(router, 'models', [])}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m routellm_batch.routers.training", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
