"""Provider prompt caching, as the providers document it (late 2026); shared by the providers, which send
the hints, and the sandbox, which bills cached prefixes the same way.

- OpenAI caches any prompt prefix of 1,024 tokens or more by itself; `prompt_cache_key` routes requests
  that share a prefix to the same cache (a short hash of the prefix).
- Anthropic caches only up to a `cache_control` breakpoint, and only a prefix at least as long as the
  model's minimum cacheable prompt length (below it the mark is ignored and nothing is cached).

Light module: standard library only.
"""

from __future__ import annotations

import hashlib

__all__ = ["ANTHROPIC_CACHE_MIN_TOKENS", "OPENAI_CACHE_MIN_TOKENS", "anthropic_cache_min_tokens", "prompt_cache_key"]

OPENAI_CACHE_MIN_TOKENS = 1024

# Model-name prefix -> minimum cacheable prompt length (Anthropic's prompt-caching docs); the longest
# matching prefix wins. Models not listed: 1,024, the documented floor.
ANTHROPIC_CACHE_MIN_TOKENS: dict[str, int] = {
    "claude-opus-4-5": 4096,
    "claude-opus-4-6": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}
_ANTHROPIC_DEFAULT = 1024


def anthropic_cache_min_tokens(model: str) -> int:
    best = max((p for p in ANTHROPIC_CACHE_MIN_TOKENS if model.startswith(p)), key=len, default=None)
    return ANTHROPIC_CACHE_MIN_TOKENS[best] if best is not None else _ANTHROPIC_DEFAULT


def prompt_cache_key(prefix: str) -> str:
    """OpenAI `prompt_cache_key` for requests sharing this prefix: short, stable, reveals nothing of it."""
    return "rlb-" + hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:16]
