"""A bounded view of a long text for the router: its head and its tail (`router.view`).

Light module (no imports beyond the standard library): the benchmarks and the learn data use it in
plain Python; `routellm_batch.spark.scoring` builds the same view in Spark (a test pins them equal).
Lengths count Unicode code points, as Spark's `substring` and `length` do.
"""

from __future__ import annotations

__all__ = ["bounded_view"]


def bounded_view(text: str, head_chars: int, tail_chars: int) -> str:
    """`text` itself when it fits in head_chars + tail_chars, else its first head_chars characters
    followed by its last tail_chars (nothing in between: no separator the router was not trained on)."""
    if head_chars < 0 or tail_chars < 0:
        raise ValueError("head_chars and tail_chars must be >= 0")
    if len(text) <= head_chars + tail_chars:
        return text
    return text[:head_chars] + (text[len(text) - tail_chars :] if tail_chars else "")
