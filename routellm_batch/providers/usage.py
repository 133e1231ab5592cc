"""Token usage of one answered request, read from each provider's `usage` object into one vocabulary.

The neutral counts (the responses table's columns, `pricing.TokenUsage`): `input_tokens` is every input
token, cached or not, and the cache counts are parts of it; `output_tokens` is every output token, and
`reasoning_tokens` is a part of it. The providers count differently:

- OpenAI: `prompt_tokens` already includes `prompt_tokens_details.cached_tokens`, and
  `completion_tokens` already includes `completion_tokens_details.reasoning_tokens`. No cache writes.
- Anthropic: `input_tokens` EXCLUDES `cache_read_input_tokens` and `cache_creation_input_tokens`
  (they are added here); `cache_creation.ephemeral_1h_input_tokens` (when given) is the part of the
  writes made with the 1-hour TTL, the rest are 5-minute writes. Thinking tokens are inside
  `output_tokens` and not reported on their own (reasoning_tokens stays None).

A count that is not a non-negative integer raises TypeError (the caller turns it into a malformed line).
Light module: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["anthropic_usage", "openai_usage"]


def _count(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{where}.{key}: expected a token count (integer >= 0), got {value!r}")
    return value


def _details(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"usage.{key}: expected an object, got {type(value).__name__}")
    return value


def openai_usage(usage: Any) -> dict[str, int | None]:
    """Neutral counts from a chat.completion's `usage`."""
    usage = usage or {}
    cached = _count(_details(usage, "prompt_tokens_details"), "cached_tokens", "usage.prompt_tokens_details")
    reasoning = _count(_details(usage, "completion_tokens_details"), "reasoning_tokens", "usage.completion_tokens_details")
    return {
        "input_tokens": _count(usage, "prompt_tokens", "usage"),
        "output_tokens": _count(usage, "completion_tokens", "usage"),
        "cached_input_tokens": cached or 0,
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": reasoning or 0,
    }


def anthropic_usage(usage: Any) -> dict[str, int | None]:
    """Neutral counts from a message's `usage`."""
    usage = usage or {}
    uncached = _count(usage, "input_tokens", "usage")
    read = _count(usage, "cache_read_input_tokens", "usage") or 0
    written = _count(usage, "cache_creation_input_tokens", "usage") or 0
    one_hour = _count(_details(usage, "cache_creation"), "ephemeral_1h_input_tokens", "usage.cache_creation") or 0
    if one_hour > written:
        raise TypeError(f"usage: {one_hour} 1-hour cache writes exceed cache_creation_input_tokens {written}")
    return {
        "input_tokens": None if uncached is None else uncached + read + written,
        "output_tokens": _count(usage, "output_tokens", "usage"),
        "cached_input_tokens": read,
        "cache_write_5m_tokens": written - one_hour,
        "cache_write_1h_tokens": one_hour,
        "reasoning_tokens": None,
    }
