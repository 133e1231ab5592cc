"""Escalation scorers by name -> "module:Class", imported only when used (like routers/registry.py).

Adding a scorer is one module under escalation/ plus one line here.
"""

from __future__ import annotations

import json
from pathlib import Path

from routellm_batch._extras import import_registered
from routellm_batch.escalation.base import CONFIG_FILE, EscalationScorer

__all__ = ["SCORERS", "load_scorer", "resolve"]

SCORERS: dict[str, str] = {
    "logprob": "routellm_batch.escalation.logprob:LogprobScorer",
    "invalid": "routellm_batch.escalation.invalid:InvalidScorer",
    "agreement": "routellm_batch.escalation.agreement:AgreementScorer",
    "learned": "routellm_batch.escalation.learned:LearnedScorer",
}


def resolve(kind: str) -> type[EscalationScorer]:
    """The scorer class registered for `kind`."""
    return import_registered(SCORERS, kind, unknown="escalation scorer", needed_for=f"escalation scorer {kind!r}")


def load_scorer(directory: str | Path) -> EscalationScorer:
    """Any scorer directory written by a scorer's `save` (config.json names its kind)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"escalation scorer {directory}: no {CONFIG_FILE}")
    try:
        kind = json.loads(path.read_text()).get("kind")
    except json.JSONDecodeError as exc:
        raise ValueError(f"escalation scorer {directory}: {CONFIG_FILE} is not valid JSON ({exc.msg})") from None
    return resolve(str(kind)).load(directory)
