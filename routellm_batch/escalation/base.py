"""The one interface every escalation scorer implements, and what it reads.

A cascade answers with the weak model first, then asks a scorer how doubtful each weak answer is:
`score(items) -> doubt`, float64 in [0, 1] (1 = surely worth sending to the strong model), one per
item, same order. The most doubtful answers are escalated within the policy's share or budget.

Each item carries the prompt and the weak answer, and what some scorers need besides: the answer's
token log-probabilities (`logprob`), a parsed/valid flag (`invalid`), extra weak samples
(`agreement`). A scorer given an item without what it needs raises `ScorerInputMissing`;
`check_provider` says at config time that a provider cannot give it (Anthropic returns no
log-probabilities), so a run fails before any work starts instead of mid-way.

Light module: numpy and the standard library.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

__all__ = [
    "CONFIG_FILE",
    "PROVIDER_GIVES",
    "EscalationScorer",
    "Need",
    "ScorerInputMissing",
    "ScorerUnsupported",
    "WeakAnswer",
    "check_provider",
    "logprobs_from_body",
    "read_scorer_config",
]

CONFIG_FILE = "config.json"
Need = Literal["logprobs", "samples"]

#: What each provider's batch API can return besides the text (OpenAI-compatible chat completions give
#: `logprobs` and `n` > 1 samples; Anthropic's Messages API gives neither).
PROVIDER_GIVES: dict[str, frozenset[str]] = {
    "openai": frozenset({"logprobs", "samples"}),
    "anthropic": frozenset(),
}


class ScorerInputMissing(ValueError):
    """An item lacks what the scorer reads (log-probabilities, a valid flag, extra samples)."""


class ScorerUnsupported(ValueError):
    """The configured provider cannot give what the scorer reads: a config-time error, with the fix."""


@dataclass(frozen=True)
class WeakAnswer:
    """One weak answer to score, with the optional signals some scorers read."""

    prompt: str
    answer: str
    logprobs: tuple[Mapping[str, Any], ...] | None = None
    """OpenAI chat completions `choices[0].logprobs.content`: per token {token, logprob, top_logprobs}."""
    valid: bool | None = None
    """The answer parsed and validated against the declared output (None: not checked)."""
    samples: tuple[str, ...] = ()
    """Extra weak answers to the same prompt (n > 1), besides `answer`."""


def logprobs_from_body(body: Mapping[str, Any] | None) -> tuple[Mapping[str, Any], ...] | None:
    """The first choice's token log-probabilities from a chat completion body (a batch output line's
    `response.body`, or the whole line); None when the response carries none."""
    if body is None:
        return None
    if "response" in body and isinstance(body.get("response"), Mapping):
        body = body["response"].get("body") or {}
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return None
    logprobs = choices[0].get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    return tuple(content) if isinstance(content, list) else None


def check_provider(scorer: EscalationScorer | str, provider: str) -> None:
    """Raise ScorerUnsupported when `provider`'s batch API cannot give what the scorer reads."""
    from routellm_batch.escalation.registry import resolve

    cls = resolve(scorer) if isinstance(scorer, str) else type(scorer)
    gives = PROVIDER_GIVES.get(provider)
    if gives is None:
        raise ScorerUnsupported(f"escalation: unknown provider {provider!r}; known: {', '.join(sorted(PROVIDER_GIVES))}")
    lacking = sorted(n for n in cls.needs if n not in gives)
    if lacking:
        raise ScorerUnsupported(
            f"escalation scorer {cls.kind!r} needs {', '.join(lacking)}, which the {provider} batch API does not "
            f"return; choose another scorer (invalid, learned{', agreement' if 'samples' in gives else ''}) "
            f"for the {provider} weak model"
        )


class EscalationScorer(ABC):
    """Weak answers -> doubt in [0, 1] (float64, same order); higher = escalate first."""

    #: registry name (see registry.SCORERS) and the `kind` of its config.json
    kind: ClassVar[str]
    #: what an item must carry besides prompt and answer
    needs: ClassVar[frozenset[Need]] = frozenset()
    format_version: ClassVar[int] = 1

    @abstractmethod
    def score(self, items: Sequence[WeakAnswer]) -> np.ndarray:
        """Doubt of each weak answer (float64 in [0, 1], same order)."""

    def config(self) -> dict[str, Any]:
        """The JSON-able settings `load` rebuilds this scorer from (beside kind and format_version)."""
        return {}

    def save(self, directory: str | Path) -> None:
        """Write a scorer directory: config.json (and the weights of a learned scorer)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        document = {"kind": self.kind, "format_version": self.format_version, **self.config()}
        (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> EscalationScorer:
        """Rebuild a scorer saved by `save`."""
        config = read_scorer_config(directory, cls.kind, cls.format_version)
        return cls(**config)


def read_scorer_config(directory: str | Path, kind: str, format_version: int) -> dict[str, Any]:
    """config.json's settings (kind and format_version removed), checked to be of `kind` and not newer."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"escalation scorer {directory}: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"escalation scorer {directory}: {CONFIG_FILE} is not valid JSON ({exc.msg})") from None
    if config.get("kind") != kind:
        raise ValueError(f"escalation scorer {directory}: kind is {config.get('kind')!r}, not {kind!r}")
    if config.get("format_version", 0) > format_version:
        raise ValueError(f"escalation scorer {directory}: format {config['format_version']} is newer than this code")
    return {k: v for k, v in config.items() if k not in ("kind", "format_version")}
