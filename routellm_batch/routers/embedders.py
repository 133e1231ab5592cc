"""Prompt embedders behind one small interface: `embed(texts) -> float32 array (n, dim)`.

Every embedder describes itself with a JSON-able `spec()`; a router checkpoint stores that spec so
`build_embedder(spec)` rebuilds the same embedder at load time. Nothing heavy is imported here at
module import time, and nothing touches CUDA until a model is actually built on a device the
caller chose.

Families (EMBEDDERS):
- "wordllama": the WordLlama l2_supercat token-embedding table that ships inside the wordllama
  wheel (offline, numpy only, thousands of texts a second). Built from the shipped safetensors and
  tokenizer file directly, which sidesteps wordllama's loader looking for `tokenizer/` while the
  wheel ships `tokenizers/` (stack-notes.md).
- "hf": a Hugging Face encoder (local directory or hub name), mean pooling, batched, fp16 on GPU.
- "openai": the OpenAI embeddings API (batched, retried with tenacity, key from the environment,
  client built on first use).
- "text_features": wraps another embedder and appends a few cheap text statistics (log length,
  word and number counts) that carry difficulty signal an averaged word embedding loses.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "EMBEDDERS",
    "CachingEmbedder",
    "Embedder",
    "HFEncoderEmbedder",
    "OpenAIEmbedder",
    "TextFeaturesEmbedder",
    "WordLlamaEmbedder",
    "build_embedder",
    "parse_embedder_arg",
]

log = logging.getLogger(__name__)


class Embedder(ABC):
    """Texts -> float32 vectors, one row per text, same order."""

    #: name in EMBEDDERS and the "type" field of the spec
    kind: ClassVar[str]

    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the vectors `embed` returns."""

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array of shape (len(texts), dim)."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-able description from which `build_embedder` rebuilds this embedder."""

    def save_files(self, directory: Path) -> dict[str, Any]:
        """Copy whatever the embedder needs into a checkpoint `directory`; return the spec to store.

        Default: nothing to copy (weights ship with a package or live behind an API).
        """
        return self.spec()

    def known_dim(self) -> int | None:
        """`dim` when it is known without loading a model (for early checks), else None."""
        return self.dim


def _as_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, expected str")
    return out


# --------------------------------------------------------------------------- wordllama


def _wordllama_dir() -> Path:
    # find_spec locates the installed package without importing it (its import configures logging).
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the wordllama package is not installed (pip install wordllama)")
    return Path(next(iter(spec.submodule_search_locations)))


class WordLlamaEmbedder(Embedder):
    """Mean of WordLlama token embeddings (same vectors as `WordLlama.load().embed(texts)`).

    `dim` < the file's width truncates (WordLlama is trained Matryoshka-style, so 64/128 work).
    `weights`/`tokenizer` default to the files shipped in the wordllama wheel.
    """

    kind = "wordllama"
    _SHIPPED_WIDTH = 256

    #: The shipped tokenizer's normalizer: prepend "▁", spaces -> "▁"; no pre-tokenizer.
    _PIECEWISE_NORMALIZER = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        ],
    }

    def __init__(
        self,
        config: str = "l2_supercat",
        dim: int = 256,
        weights: str | None = None,
        tokenizer: str | None = None,
        max_cached_pieces: int = 500_000,
    ) -> None:
        self.config = config
        self._dim = int(dim)
        self.weights = weights
        self.tokenizer_file = tokenizer
        self.max_cached_pieces = int(max_cached_pieces)
        self._table: np.ndarray | None = None
        self._tokenizer = None
        # Per-instance cache: space-separated piece -> its token ids (int32 bytes); see _token_ids.
        self._piece_tokenizer = None
        self._pieces: dict[str, bytes] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.kind, "config": self.config, "dim": self._dim}
        if self.weights:
            spec["weights"] = self.weights
        if self.tokenizer_file:
            spec["tokenizer"] = self.tokenizer_file
        return spec

    def _files(self) -> tuple[Path, Path]:
        if self.weights and self.tokenizer_file:
            return Path(self.weights), Path(self.tokenizer_file)
        root = _wordllama_dir()
        weights = Path(self.weights) if self.weights else root / "weights" / f"{self.config}_{self._SHIPPED_WIDTH}.safetensors"
        tok = (
            Path(self.tokenizer_file)
            if self.tokenizer_file
            else root / "tokenizers" / f"{self.config}_tokenizer_config.json"
        )
        for f in (weights, tok):
            if not f.is_file():
                raise FileNotFoundError(
                    f"wordllama embedder {self.config!r}: {f} is not in the installed wheel; "
                    "pass weights=... and tokenizer=... (local files)"
                )
        return weights, tok

    def _load(self) -> None:
        if self._table is not None:
            return
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        weights, tok = self._files()
        table = load_file(str(weights))["embedding.weight"]
        if self._dim > table.shape[1]:
            raise ValueError(f"wordllama embedder: dim {self._dim} > {table.shape[1]} in {weights.name}")
        self._table = np.ascontiguousarray(table[:, : self._dim], dtype=np.float32)
        tokenizer = Tokenizer.from_file(str(tok))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        spec = json.loads(tokenizer.to_str())
        if spec.get("normalizer") == self._PIECEWISE_NORMALIZER and spec.get("pre_tokenizer") is None:
            pieces = Tokenizer.from_file(str(tok))
            pieces.normalizer = None  # pieces arrive normalized
            pieces.no_padding()
            pieces.no_truncation()
            self._piece_tokenizer = pieces

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_list(texts)
        self._load()
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        flat, lengths = self._token_ids(texts)
        flat = np.clip(flat, 0, self._table.shape[0] - 1).astype(np.int64)
        return _mean_pool(self._table, flat, lengths)

    def _token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(all token ids, concatenated; token count per text), as the wheel's tokenizer gives them.

        The tokenizer runs BPE over the whole normalized text ("▁" + text with spaces as "▁"). Merges
        never cross into a "▁" that starts a word, so the ids equal the concatenated ids of the
        space-separated pieces (tests/test_routers_embedders.py checks this against the tokenizer).
        Pieces repeat a lot across prompts, so their ids are cached per instance: tokenizing is then
        mostly dictionary lookups. Bounded by `max_cached_pieces` (cleared when full).
        """
        if self._piece_tokenizer is None:  # some other tokenizer file: tokenize whole texts
            ids = [e.ids for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            return np.array(list(itertools.chain.from_iterable(ids)), dtype=np.int32), lengths
        per_text = [_pieces(t) for t in texts]
        cache = self._pieces
        missing = {p for pieces in per_text for p in pieces if p not in cache}
        if missing and len(cache) + len(missing) > self.max_cached_pieces:
            log.debug("wordllama piece cache full (%d pieces): cleared", len(cache))
            cache.clear()
            missing = {p for pieces in per_text for p in pieces}
        if missing:
            order = list(missing)
            encoded = self._piece_tokenizer.encode_batch_fast(order, add_special_tokens=False)
            for piece, enc in zip(order, encoded, strict=True):
                cache[piece] = np.asarray(enc.ids, dtype=np.int32).tobytes()
        blobs = [cache[p] for pieces in per_text for p in pieces]
        flat = np.frombuffer(b"".join(blobs), dtype=np.int32)
        tokens_per_piece = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // 4
        pieces_per_text = np.fromiter(map(len, per_text), dtype=np.int64, count=len(per_text))
        ends = np.concatenate(([0], np.cumsum(tokens_per_piece)))[np.cumsum(pieces_per_text)]
        lengths = np.diff(np.concatenate(([0], ends)))
        return flat, lengths


def _pieces(text: str) -> list[str]:
    """The normalized text ("▁" + text, spaces as "▁") cut before each run of "▁" that starts a word."""
    if not text:
        return []
    if "  " not in text and text[0] != " " and text[-1] != " ":
        return ["\u2581" + w for w in text.split(" ")]
    out = []
    pending = 0
    for word in text.split(" "):
        pending += 1
        if word:
            out.append("\u2581" * pending + word)
            pending = 0
    if pending:
        out.append("\u2581" * pending)
    return out


def _mean_pool(table: np.ndarray, flat_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row i = mean of table[ids of text i]; a text without tokens gets zeros (as wordllama does).

    A sparse (texts x vocab) averaging matrix times the table: no padded (texts, tokens, dim) block,
    no per-text Python loop. scipy comes with great-expectations; without it, a slower numpy path.
    """
    n = len(lengths)
    weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    try:
        from scipy.sparse import csr_matrix
    except ImportError:  # pragma: no cover - scipy is normally installed
        out = np.zeros((n, table.shape[1]), dtype=np.float32)
        rows = np.repeat(np.arange(n), lengths)
        np.add.at(out, rows, table[flat_ids] * weights[:, None])
        return out
    averaging = csr_matrix((weights, flat_ids, indptr), shape=(n, table.shape[0]))
    return np.asarray(averaging @ table, dtype=np.float32)


# --------------------------------------------------------------------------- Hugging Face encoder


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. Call only where torch may be imported."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class HFEncoderEmbedder(Embedder):
    """A Hugging Face encoder (AutoModel), masked mean pooling over the last hidden state.

    `model` is a local directory or a hub name. fp16 on GPU by default (dtype="auto"), float32 on CPU.
    Texts are sorted by length before batching so each batch pads little; output keeps input order.
    """

    kind = "hf"
    _IN_CHECKPOINT = "embedder"

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        max_length: int = 512,
        batch_size: int = 64,
        dtype: str = "auto",
        normalize: bool = False,
        local_files_only: bool = False,
    ) -> None:
        self.model_name = str(model)
        self.device = device
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.normalize = bool(normalize)
        self.local_files_only = bool(local_files_only)
        self._model = None
        self._tokenizer = None
        self._dim: int | None = None

    def spec(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "model": self.model_name,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "normalize": self.normalize,
        }

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        device = resolve_device(self.device)
        if self.dtype == "auto":
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        kwargs = {"local_files_only": self.local_files_only}
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_name, **kwargs)
        model = AutoModel.from_pretrained(self.model_name, dtype=dtype, **kwargs)
        self._model = model.to(device).eval()
        self._device = device
        self._dim = int(model.config.hidden_size)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        return int(self._dim)

    def known_dim(self) -> int | None:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_list(texts)
        self._load()
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self._device)
                hidden = self._model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.cpu().numpy()
        return out

    def save_files(self, directory: Path) -> dict[str, Any]:
        """A local model is copied into the checkpoint so it travels with it; a hub name is kept as is."""
        spec = self.spec()
        if Path(self.model_name).is_dir():
            self._load()
            target = Path(directory) / self._IN_CHECKPOINT
            self._model.save_pretrained(target)
            self._tokenizer.save_pretrained(target)
            spec["model"] = self._IN_CHECKPOINT
            spec["in_checkpoint"] = True
        return spec


# --------------------------------------------------------------------------- OpenAI API


class OpenAIEmbedder(Embedder):
    """OpenAI embeddings API, `batch_size` texts per request, retried on transient errors.

    The key comes only from the environment variable named by `api_key_env`; the client is built on
    first use, so building the embedder (or loading a router that uses it) needs no key.
    """

    kind = "openai"
    _DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 512,
        max_attempts: int = 6,
        max_input_chars: int = 20_000,
        retry_initial_wait: float = 1.0,
        timeout: float = 60.0,
    ) -> None:
        if not 1 <= batch_size <= 2048:
            raise ValueError("openai embedder: batch_size must be in 1..2048 (the API's per-request cap)")
        self.model = model
        self.dimensions = dimensions
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.batch_size = int(batch_size)
        self.max_attempts = int(max_attempts)
        self.max_input_chars = int(max_input_chars)
        self.retry_initial_wait = float(retry_initial_wait)
        self.timeout = float(timeout)
        self._client = None

    @property
    def dim(self) -> int:
        if self.dimensions:
            return int(self.dimensions)
        try:
            return self._DIMS[self.model]
        except KeyError:
            raise ValueError(f"openai embedder: unknown width of {self.model!r}; set dimensions=") from None

    def known_dim(self) -> int | None:
        return int(self.dimensions) if self.dimensions else self._DIMS.get(self.model)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": self.kind, "model": self.model, "api_key_env": self.api_key_env}
        for k in ("dimensions", "base_url"):
            if getattr(self, k):
                spec[k] = getattr(self, k)
        spec["batch_size"] = self.batch_size
        return spec

    def _get_client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env)
            if not key:
                raise RuntimeError(
                    f"openai embedder: environment variable {self.api_key_env} is not set (it must hold the API key)"
                )
            # Retries are ours (tenacity, below); the SDK's own would multiply them.
            self._client = openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout)
        return self._client

    def _request(self, batch: list[str]) -> np.ndarray:
        import openai
        from tenacity import (
            Retrying,
            before_sleep_log,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        transient = (
            openai.RateLimitError,
            openai.APIConnectionError,
            openai.APITimeoutError,
            openai.InternalServerError,
        )
        kwargs: dict[str, Any] = {"model": self.model, "input": batch}
        if self.dimensions:
            kwargs["dimensions"] = int(self.dimensions)
        for attempt in Retrying(
            retry=retry_if_exception_type(transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential_jitter(initial=self.retry_initial_wait, max=60.0),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        ):
            with attempt:
                response = self._get_client().embeddings.create(**kwargs)
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(batch):
            raise RuntimeError(f"openai embedder: asked for {len(batch)} embeddings, got {len(data)}")
        return np.asarray([d.embedding for d in data], dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_list(texts)
        # The API rejects empty strings and over-long inputs; a blank and a prefix keep the row scorable.
        texts = [t[: self.max_input_chars] if t.strip() else " " for t in texts]
        parts = [self._request(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------- text features


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def text_features(texts: Sequence[str]) -> np.ndarray:
    """log1p of: characters, words, distinct words, numbers, digits in numbers, lines.

    Words are whitespace-separated (str.split: fast, and enough for a length/variety signal).
    """
    out = np.empty((len(texts), TextFeaturesEmbedder.N_FEATURES), dtype=np.float64)
    for i, t in enumerate(texts):
        words = t.split()
        numbers = _NUMBER.findall(t)
        out[i] = (
            len(t),
            len(words),
            len(set(words)),
            len(numbers),
            sum(map(len, numbers)),
            t.count("\n") + 1 if t else 0,
        )
    return np.log1p(out).astype(np.float32)


class TextFeaturesEmbedder(Embedder):
    """`base`'s vectors with TEXT_FEATURES appended (a router standardizes its inputs when trained)."""

    kind = "text_features"
    N_FEATURES = 6

    def __init__(self, base: Embedder) -> None:
        self.base = base

    @property
    def dim(self) -> int:
        return self.base.dim + self.N_FEATURES

    def known_dim(self) -> int | None:
        base = self.base.known_dim()
        return None if base is None else base + self.N_FEATURES

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "base": self.base.spec()}

    def save_files(self, directory: Path) -> dict[str, Any]:
        return {"type": self.kind, "base": self.base.save_files(directory)}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_list(texts)
        return np.concatenate([self.base.embed(texts), text_features(texts)], axis=1)


# --------------------------------------------------------------------------- cache


def spec_fingerprint(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class CachingEmbedder(Embedder):
    """Remembers vectors by a hash of the text: in memory, and in `cache_dir` when given.

    For training and k-fold evaluation, where the same data set is embedded many times. The disk
    cache is one .npz per embedder spec (so a different model never reads another's vectors).
    """

    def __init__(self, inner: Embedder, cache_dir: str | Path | None = None) -> None:
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[bytes, np.ndarray] = {}
        self._disk_loaded = False

    @property
    def dim(self) -> int:
        return self.inner.dim

    def known_dim(self) -> int | None:
        return self.inner.known_dim()

    def spec(self) -> dict[str, Any]:
        return self.inner.spec()

    def save_files(self, directory: Path) -> dict[str, Any]:
        return self.inner.save_files(directory)

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.inner.kind}-{spec_fingerprint(self.inner.spec())}.npz"

    def _load_disk(self) -> None:
        self._disk_loaded = True
        path = self._cache_file()
        if path is None or not path.is_file():
            return
        with np.load(path) as data:
            keys, vectors = data["keys"], data["vectors"]
        for k, v in zip(keys, vectors, strict=True):
            self._memory.setdefault(k.tobytes(), v)

    def _save_disk(self) -> None:
        path = self._cache_file()
        if path is None or not self._memory:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.frombuffer(b"".join(self._memory), dtype="V16")
        vectors = np.stack(list(self._memory.values()))
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, keys=keys, vectors=vectors)
        os.replace(tmp.name, path)  # atomic: a concurrent reader sees the old or the new file

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = _as_list(texts)
        if not self._disk_loaded:
            self._load_disk()
        keys = [self._key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in self._memory:
                missing.setdefault(k, t)
        if missing:
            vectors = self.inner.embed(list(missing.values()))
            for k, v in zip(missing, vectors, strict=True):
                self._memory[k] = v
            self._save_disk()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._memory[k] for k in keys]).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- registry


EMBEDDERS: dict[str, type[Embedder]] = {
    "wordllama": WordLlamaEmbedder,
    "hf": HFEncoderEmbedder,
    "openai": OpenAIEmbedder,
    "text_features": TextFeaturesEmbedder,
}


def build_embedder(spec: dict[str, Any] | str | Embedder, device: str = "cpu", base_dir: str | Path | None = None) -> Embedder:
    """An embedder from its spec (as stored in a checkpoint), a CLI string, or an instance (returned as is).

    `base_dir` is the checkpoint directory, for embedder files copied into it (`in_checkpoint`).
    """
    if isinstance(spec, Embedder):
        return spec
    if isinstance(spec, str):
        spec = parse_embedder_arg(spec)
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown embedder type {kind!r}; allowed: {', '.join(sorted(EMBEDDERS))}")
    if kind == "text_features":
        return TextFeaturesEmbedder(build_embedder(spec["base"], device=device, base_dir=base_dir))
    if kind == "hf":
        if spec.pop("in_checkpoint", False):
            if base_dir is None:
                raise ValueError("hf embedder stored in a checkpoint: the checkpoint directory is needed")
            spec["model"] = str(Path(base_dir) / spec["model"])
        spec.setdefault("device", device)
    try:
        return EMBEDDERS[kind](**spec)
    except TypeError as exc:
        raise ValueError(f"embedder {kind!r}: bad settings {sorted(spec)}: {exc}") from None


def parse_embedder_arg(text: str) -> dict[str, Any]:
    """CLI form -> spec: 'wordllama', 'wordllama:128', 'hf:PATH_OR_NAME', 'openai:MODEL',
    a '+features' suffix on any of them (text statistics appended), or a JSON spec."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    features = text.endswith("+features")
    text = text.removesuffix("+features")
    kind, _, arg = text.partition(":")
    if kind == "wordllama":
        spec: dict[str, Any] = {"type": "wordllama", "dim": int(arg) if arg else 256}
    elif kind == "hf":
        if not arg:
            raise ValueError("--embedder hf:PATH_OR_NAME needs a model")
        spec = {"type": "hf", "model": arg}
    elif kind == "openai":
        spec = {"type": "openai", "model": arg or "text-embedding-3-small"}
    else:
        raise ValueError(f"unknown embedder {text!r}; use wordllama[:DIM], hf:PATH, openai[:MODEL] (+features) or JSON")
    return {"type": "text_features", "base": spec} if features else spec

