"""Splitting a queue into shards within every limit, once for all providers.

A shard closes before a request would push it past the requests cap, the bytes cap (of the
serialized shard, exactly as sent) or the per-model enqueued-token budget (estimated prompt
tokens). Requests stream through: only the open shard's sink holds anything, and it writes to
storage as it goes. Shard ids are deterministic from (run, queue, attempt, index), so a re-run
that recomputes the plan recomputes the same shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from routellm_batch.config import BatchSettings
from routellm_batch.providers.base import BatchLimits

__all__ = ["PackedRequest", "ShardLimits", "ShardPacker", "ShardSink", "shard_id"]

S = TypeVar("S", covariant=True)


def shard_id(run_id: str, queue: str, attempt: int, index: int) -> str:
    """`<queue>-a<attempt>-<index>-<run digest>`: readable, deterministic, unique across runs."""
    run = hashlib.blake2b(run_id.encode(), digest_size=4).hexdigest()
    return f"{queue}-a{attempt}-{index:05d}-{run}"


@dataclass(frozen=True)
class ShardLimits:
    max_requests: int
    max_bytes: int
    max_tokens: int | None
    """Estimated prompt tokens per shard (the enqueued-token budget); None = no budget."""

    @classmethod
    def for_provider(cls, limits: BatchLimits, settings: BatchSettings) -> ShardLimits:
        capped = limits.capped(settings)
        return cls(capped.max_requests, capped.max_bytes, settings.enqueued_token_budget)


@dataclass(frozen=True)
class PackedRequest:
    prompt_id: str
    custom_id: str
    line: bytes
    """The serialized request line, newline included: its length is what the bytes cap counts."""
    est_tokens: int


class ShardSink(Protocol[S]):
    def add(self, item: PackedRequest) -> None: ...
    def close(self) -> S: ...


class ShardPacker(Generic[S]):
    """Greedy, order-preserving packing: fill a shard until the next request would not fit."""

    def __init__(self, limits: ShardLimits, open_shard: Callable[[int], ShardSink[S]]) -> None:
        if limits.max_requests < 1 or limits.max_bytes < 1:
            raise ValueError(f"shard limits must be positive, got {limits}")
        self.limits = limits
        self._open_shard = open_shard
        self._sink: ShardSink[S] | None = None
        self._index = 0
        self._n = self._bytes = self._tokens = 0
        self.closed: list[S] = []

    def fits_alone(self, item: PackedRequest) -> bool:
        """False when the request is larger than a whole batch may be: it can never be sent."""
        return len(item.line) <= self.limits.max_bytes

    def add(self, item: PackedRequest) -> None:
        if not self.fits_alone(item):
            raise ValueError(
                f"prompt_id={item.prompt_id!r}: serialized request is {len(item.line)} bytes, "
                f"over the batch limit of {self.limits.max_bytes}"
            )
        if self._sink is not None and not self._room_for(item):
            self._close()
        if self._sink is None:
            self._sink = self._open_shard(self._index)
            self._index += 1
        self._sink.add(item)
        self._n += 1
        self._bytes += len(item.line)
        self._tokens += item.est_tokens

    def _room_for(self, item: PackedRequest) -> bool:
        lim = self.limits
        if self._n + 1 > lim.max_requests or self._bytes + len(item.line) > lim.max_bytes:
            return False
        # A request alone over the token budget still gets a shard of its own (sent when nothing
        # else of the model is enqueued); it never shares one.
        return lim.max_tokens is None or self._tokens + item.est_tokens <= lim.max_tokens

    def _close(self) -> None:
        assert self._sink is not None
        self.closed.append(self._sink.close())
        self._sink = None
        self._n = self._bytes = self._tokens = 0

    def finish(self) -> list[S]:
        if self._sink is not None:
            self._close()
        return self.closed
