"""Who answers the sandbox's requests: synthetic text, or answers recorded in a table.

A responder turns one neutral `ChatRequest` into an `Answer` (text plus token usage), or
raises `UnknownPrompt` when it has nothing to say (the server turns that into an
invalid_request_error result line for that request only). Same request -> same answer.

Usage is as uneven as the real APIs' (so the cost account is exercised): reasoning models (gpt-5*,
o-series; Claude with `thinking` enabled) spend hidden reasoning tokens inside max_tokens, and may
spend all of it (an empty answer, finish_reason length); a `PromptCache` per batch makes a request
whose leading messages an earlier request of the batch already sent read them from the cache
(OpenAI: automatic, from 1,024 tokens in steps of 128; Anthropic: only up to a `cache_control`
breakpoint, written first at 1.25x / 2x, read after at 0.1x).

Light module: pandas / pyarrow are imported only inside `ReplayResponder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from routellm_batch.providers.prompt_cache import OPENAI_CACHE_MIN_TOKENS, anthropic_cache_min_tokens

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Answer",
    "ChatRequest",
    "PromptCache",
    "ReplayResponder",
    "Responder",
    "SyntheticResponder",
    "UnknownPrompt",
    "count_tokens",
    "prompt_tokens",
]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks (close enough to BPE for accounting)."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class ChatRequest:
    """One request in provider-neutral form (the server extracts it from either API's body)."""

    provider: Literal["openai", "anthropic"]
    model: str
    messages: tuple[tuple[str, str], ...]
    """(role, text) pairs, in order; list-of-blocks contents are joined into their text."""
    system: str | None = None
    max_tokens: int | None = None
    cache_breakpoint: int | None = None
    """Anthropic `cache_control`: the prefix of this many leading parts (system first) is cacheable."""
    cache_ttl: Literal["5m", "1h"] = "5m"
    thinking_budget: int | None = None
    """Anthropic extended thinking (`thinking.budget_tokens`) when enabled."""
    logprobs: bool = False
    """OpenAI `logprobs: true`: return the answer's token log-probabilities."""
    top_logprobs: int = 0
    answer_schema: str | None = None
    """The JSON schema (as JSON text) a structured answer must fit: OpenAI `response_format` json_schema,
    Anthropic `output_config.format` (sandbox.structured answers it)."""
    prompt_cache_key: str | None = None
    """OpenAI `prompt_cache_key`: requests with the same key share a prompt cache."""

    @property
    def prompt(self) -> str:
        """The last user message: what a prompt table row holds."""
        for role, text in reversed(self.messages):
            if role == "user":
                return text
        return self.messages[-1][1] if self.messages else ""


def _parts(request: ChatRequest) -> list[str]:
    """The prompt's parts in the order a cache sees them: the system prompt, then each message."""
    return ([request.system] if request.system else []) + [text for _role, text in request.messages]


def _tokens_of(parts: Sequence[str]) -> int:
    return 3 + sum(4 + count_tokens(text) for text in parts)


def prompt_tokens(request: ChatRequest) -> int:
    """Input tokens as billed: message texts plus a small per-message overhead."""
    return _tokens_of(_parts(request))


@dataclass(frozen=True)
class Answer:
    """One answer and its usage, in the project's vocabulary: `input_tokens` are all input tokens (the
    cache counts are parts of them), `output_tokens` all output tokens (reasoning_tokens a part)."""

    text: str
    input_tokens: int
    output_tokens: int
    truncated: bool
    """True when max_tokens cut the text (finish_reason length / stop_reason max_tokens)."""
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    confidence: float | None = None
    """Set when the request asked for logprobs: the geometric mean token probability (sandbox.logprobs)."""
    top_logprobs: int = 0


class UnknownPrompt(LookupError):
    """The responder has no answer for this request; the message says why (no secrets)."""


class Responder(Protocol):
    def respond(self, request: ChatRequest) -> Answer: ...


_REASONING_MODEL = re.compile(r"^(gpt-5|o\d)")
# Hidden reasoning per request (a deterministic draw): from a short thought to more than a small
# max_tokens holds, so some answers come back empty with finish_reason length, as they do for real.
_REASONING_RANGE = (16, 800)


def reasoning_tokens(request: ChatRequest) -> int:
    """Reasoning tokens this request spends before answering (0 for a model that does not reason)."""
    if request.provider == "anthropic":
        budget = request.thinking_budget
        if not budget:
            return 0
    elif not _REASONING_MODEL.match(request.model):
        return 0
    else:
        budget = None
    key = repr(("reasoning", request.model, request.system, request.messages)).encode()
    drawn = random.Random(hashlib.sha256(key).digest()).randint(*_REASONING_RANGE)
    return min(drawn, budget) if budget else drawn


def _finish(request: ChatRequest, text: str) -> Answer:
    """Usage from the texts; reasoning first, then the answer cut at what is left of max_tokens."""
    thought = reasoning_tokens(request)
    limit = request.max_tokens
    if limit is not None and thought >= limit:
        # The reasoning used the whole budget: billed, and nothing to show for it.
        return Answer("", prompt_tokens(request), limit, truncated=True, reasoning_tokens=limit)
    visible = None if limit is None else limit - thought
    tokens = list(_TOKEN.finditer(text))
    truncated = visible is not None and len(tokens) > visible
    if truncated:
        assert visible is not None
        text = text[: tokens[visible - 1].end()]
        n_out = visible
    else:
        n_out = len(tokens)
    return Answer(text, prompt_tokens(request), n_out + thought, truncated, reasoning_tokens=thought)


# Prompt caching (providers.prompt_cache): OpenAI caches any prompt of 1,024 tokens or more, hits counted in
# steps of 128; Anthropic caches only up to a cache_control breakpoint, from the model's minimum length.
OPENAI_CACHE_STEP = 128


class PromptCache:
    """The provider's prompt cache as one batch's requests see it, in the batch's order."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def _key(self, model: str, parts: Sequence[str], scope: str | None = None) -> bytes:
        return hashlib.sha256(repr((model, scope, tuple(parts))).encode()).digest()

    def apply(self, request: ChatRequest, answer: Answer) -> Answer:
        """The answer with the cache reads (and, for Anthropic, writes) this request makes."""
        parts = _parts(request)
        if request.provider == "openai":
            # The longest leading run of parts (never the whole prompt) that an earlier request sent.
            # A prompt_cache_key scopes the cache (OpenAI routes requests by it together with the prefix).
            scope = request.prompt_cache_key
            cached = 0
            for k in range(len(parts) - 1, 0, -1):
                if self._key(request.model, parts[:k], scope) in self._seen:
                    cached = _tokens_of(parts[:k])
                    break
            self._seen.update(self._key(request.model, parts[:k], scope) for k in range(1, len(parts)))
            if cached < OPENAI_CACHE_MIN_TOKENS or answer.input_tokens < OPENAI_CACHE_MIN_TOKENS:
                return answer
            cached = OPENAI_CACHE_MIN_TOKENS + (cached - OPENAI_CACHE_MIN_TOKENS) // OPENAI_CACHE_STEP * OPENAI_CACHE_STEP
            return dataclasses.replace(answer, cached_input_tokens=cached)
        if request.cache_breakpoint is None:
            return answer
        prefix = parts[: request.cache_breakpoint]
        tokens = _tokens_of(prefix)
        if tokens < anthropic_cache_min_tokens(request.model):
            return answer  # too short to cache: billed as plain input, as Anthropic does
        key = self._key(request.model, prefix)
        if key in self._seen:
            return dataclasses.replace(answer, cached_input_tokens=tokens)
        self._seen.add(key)
        write = "cache_write_1h_tokens" if request.cache_ttl == "1h" else "cache_write_5m_tokens"
        return dataclasses.replace(answer, **{write: tokens})


_WORDS = (
    "the answer depends on several factors first consider the numbers given then apply the rule "
    "step by step so the result follows directly we check each case carefully and combine them "
    "therefore in total this gives a clear final value which matches the expected pattern"
).split()


@dataclass(frozen=True)
class SyntheticResponder:
    """Deterministic made-up answers: text and length derived from (seed, model, messages)."""

    seed: int = 0
    min_words: int = 8
    max_words: int = 80

    def respond(self, request: ChatRequest) -> Answer:
        key = repr((self.seed, request.model, request.system, request.messages)).encode()
        rng = random.Random(hashlib.sha256(key).digest())
        n = rng.randint(self.min_words, self.max_words)
        words = [rng.choice(_WORDS) for _ in range(n)]
        text = f"[{request.model}] " + " ".join(words) + f". Final answer: {rng.randint(0, 999)}."
        return _finish(request, text)


class ReplayResponder:
    """Answers recorded in a table with columns prompt, model, response (and optionally `correct`:
    whether the recorded answer is right, which makes its logprobs less confident when it is not).

    `model_aliases` maps a configured model name onto a recorded one
    (`{"gpt-4.1": "gpt-4-1106-preview"}`); the key `"*"` maps any other name.
    A prompt or model not in the table -> `UnknownPrompt` (an errored result line).
    """

    def __init__(
        self,
        table: pd.DataFrame | str | Path,
        model_aliases: Mapping[str, str] | None = None,
    ) -> None:
        df = _read_table(table) if isinstance(table, (str, Path)) else table
        missing = [c for c in ("prompt", "model", "response") if c not in df.columns]
        if missing:
            raise ValueError(
                f"replay table lacks column(s) {missing}; it needs prompt, model, response "
                f"(a GSM8K-style file? use ReplayResponder.from_gsm8k_csv)"
            )
        self._answers: dict[tuple[str, str], str] = {}
        self._correct: dict[tuple[str, str], bool] = {}
        correct = df["correct"] if "correct" in df.columns else [None] * len(df)
        for prompt, model, response, right in zip(df["prompt"], df["model"], df["response"], correct, strict=True):
            if not isinstance(prompt, str) or not isinstance(model, str) or not isinstance(response, str):
                continue  # a missing answer is "not recorded", not an empty answer
            self._answers.setdefault((model, prompt.strip()), response)
            if right is not None and right == right:  # NaN: not known
                self._correct.setdefault((model, prompt.strip()), bool(right))
        self.models: frozenset[str] = frozenset(m for m, _ in self._answers)
        self.model_aliases: dict[str, str] = dict(model_aliases or {})
        unknown = sorted(set(self.model_aliases.values()) - self.models)
        if unknown:
            raise ValueError(f"model_aliases point at model(s) not in the table: {unknown}; recorded: {sorted(self.models)}")

    def __len__(self) -> int:
        return len(self._answers)

    @classmethod
    def from_gsm8k_csv(cls, path: str | Path, model_aliases: Mapping[str, str] | None = None) -> ReplayResponder:
        """RouteLLM's gsm8k_responses.csv: columns prompt, <model>, <model>_response."""
        return cls(_melt_wide(_read_table(path)), model_aliases)

    @classmethod
    def load(cls, path: str | Path, model_aliases: Mapping[str, str] | None = None) -> ReplayResponder:
        """A long table (prompt, model, response) or a wide GSM8K-style one, CSV or Parquet."""
        df = _read_table(path)
        if "model" not in df.columns and any(str(c).endswith("_response") for c in df.columns):
            df = _melt_wide(df)
        return cls(df, model_aliases)

    def recorded_model(self, model: str) -> str | None:
        if model in self.models:
            return model
        return self.model_aliases.get(model, self.model_aliases.get("*"))

    def correct(self, request: ChatRequest) -> bool | None:
        """Whether the recorded answer to this request is right (None: not recorded)."""
        recorded = self.recorded_model(request.model)
        return None if recorded is None else self._correct.get((recorded, request.prompt.strip()))

    def respond(self, request: ChatRequest) -> Answer:
        recorded = self.recorded_model(request.model)
        if recorded is None:
            raise UnknownPrompt(
                f"replay: no recorded answers for model {request.model!r} and no alias for it; "
                f"recorded models: {sorted(self.models)}"
            )
        text = self._answers.get((recorded, request.prompt.strip()))
        if text is None:
            head = request.prompt.strip()[:60]
            raise UnknownPrompt(f"replay: prompt not in the replay table for model {recorded!r}: {head!r}...")
        return _finish(request, text)


def _read_table(path: str | Path) -> pd.DataFrame:
    import pandas as pd

    path = str(path)
    if path.endswith(".parquet") or Path(path).is_dir():
        return pd.read_parquet(path)
    if path.endswith(".csv"):
        return pd.read_csv(path)
    raise ValueError(f"replay table {path!r}: expected a .csv or .parquet file")


def _melt_wide(df: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    if "prompt" not in df.columns:
        raise ValueError("GSM8K-style replay file lacks the 'prompt' column")
    models: Sequence[str] = [str(c)[: -len("_response")] for c in df.columns if str(c).endswith("_response")]
    if not models:
        raise ValueError("GSM8K-style replay file has no '<model>_response' column")
    parts: list[Any] = [
        pd.DataFrame({"prompt": df["prompt"], "model": m, "response": df[f"{m}_response"],
                      # RouteLLM's `<model>` column records whether that answer is right
                      "correct": df[m] if m in df.columns else None}) for m in models
    ]
    return pd.concat(parts, ignore_index=True)
