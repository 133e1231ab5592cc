"""Escalation scorers: how doubtful is a weak answer, i.e. should the cascade send its prompt to the
strong model in a second pass? One interface (base.EscalationScorer), a registry (registry.SCORERS):
logprob, invalid, agreement, learned. Light package: numpy and the standard library at import; the
learned scorer imports its embedder and safetensors only when trained or loaded.
"""

from routellm_batch.escalation.base import (
    PROVIDER_GIVES,
    EscalationScorer,
    ScorerInputMissing,
    ScorerUnsupported,
    WeakAnswer,
    check_provider,
    logprobs_from_body,
)
from routellm_batch.escalation.registry import SCORERS, load_scorer, resolve

__all__ = [
    "PROVIDER_GIVES",
    "SCORERS",
    "EscalationScorer",
    "ScorerInputMissing",
    "ScorerUnsupported",
    "WeakAnswer",
    "check_provider",
    "load_scorer",
    "logprobs_from_body",
    "resolve",
]
