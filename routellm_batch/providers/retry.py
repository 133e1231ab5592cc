"""The one retry policy for provider calls: bounded attempts, exponential backoff with jitter,
Retry-After honoured. Built on tenacity; used for every call except batch create (see
batches/create.py: a create is retried only after reconciling with the provider's batch list).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from routellm_batch.providers.errors import ProviderError, TransientProviderError

__all__ = ["RetryPolicy", "call_with_retries", "acall_with_retries"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    """Tries per call, the first included."""
    initial_wait: float = 0.5
    """Seconds of the first backoff; doubles each try (full jitter)."""
    max_wait: float = 60.0
    """Cap of one backoff, and of a Retry-After the server asks for."""

    def backoff(self, attempt: int) -> float:
        """Upper bound of the jittered backoff before try `attempt + 1`."""
        return min(self.max_wait, self.initial_wait * 2 ** max(0, attempt - 1))


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    """Retry-After when the server sent one (capped), else exponential backoff with full jitter."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.jitter = tenacity.wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, ProviderError) and exc.retry_after is not None:
            return min(self.policy.max_wait, exc.retry_after)
        return self.jitter(retry_state)


def _log_retry(what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        # Our exceptions' messages are redacted; never log an SDK exception object here.
        log.warning("%s failed (try %d): %s; retrying in %.2fs", what, state.attempt_number, exc, wait)

    return before_sleep


def _retrying_kwargs(policy: RetryPolicy, what: str) -> dict:
    return dict(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=_WaitRetryAfterOrBackoff(policy),
        retry=tenacity.retry_if_exception_type(TransientProviderError),
        before_sleep=_log_retry(what),
        reraise=True,
    )


def call_with_retries(fn: Callable[[], T], *, policy: RetryPolicy, what: str) -> T:
    """Call `fn` until it returns or raises something other than a transient provider error."""
    for attempt in tenacity.Retrying(**_retrying_kwargs(policy, what)):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover


async def acall_with_retries(fn: Callable[[], Awaitable[T]], *, policy: RetryPolicy, what: str) -> T:
    """The async twin of `call_with_retries` (sleeps with asyncio, never blocks the loop)."""
    async for attempt in tenacity.AsyncRetrying(**_retrying_kwargs(policy, what)):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")  # pragma: no cover
