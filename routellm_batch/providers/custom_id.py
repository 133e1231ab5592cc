"""custom_id: the key that joins a provider's result line back to its prompt.

Deterministic from (run_id, prompt_id, attempt), so a re-run computes the same ids, and each
attempt of a prompt has its own id (results of attempt 1 and 2 can never be confused). Always
matches `^[a-zA-Z0-9_-]{1,64}$` (Anthropic's rule; OpenAI accepts it too).

Form: `<readable prefix>-<digest>`: the prefix is the prompt id with unsafe characters replaced
(for humans reading a result file), the 20-hex digest (80 bits of BLAKE2b over run, prompt and
attempt) makes ids that differ only in unsafe characters, or past the prefix, distinct.
Mapping back never inverts anything: each shard keeps an explicit custom_id -> prompt_id map
(see ledger.py), and a shard refuses to hold two rows with one custom_id.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["CUSTOM_ID_PATTERN", "make_custom_id", "is_valid_custom_id"]

CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_PREFIX_CHARS = 40
_DIGEST_BYTES = 10


def make_custom_id(run_id: str, prompt_id: str, attempt: int) -> str:
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    digest = hashlib.blake2b(
        "\x00".join((run_id, prompt_id, str(attempt))).encode("utf-8", "surrogatepass"),
        digest_size=_DIGEST_BYTES,
    ).hexdigest()
    prefix = _UNSAFE.sub("_", prompt_id)[:_PREFIX_CHARS] or "p"
    return f"{prefix}-{digest}"


def is_valid_custom_id(value: str) -> bool:
    return CUSTOM_ID_PATTERN.fullmatch(value) is not None
