"""`agreement`: doubt from how many extra weak samples disagree with the weak answer (self-consistency).

Each answer is reduced to a key before comparing: its final number ("final_number", for maths), its
normalized text ("normalized": case, accents, punctuation and spacing ignored, for labels and short
answers), or the first JSON value ("json"). doubt = the share of the extra samples whose key differs
from the answer's (an answer without a key disagrees with everything). Needs n > 1 weak samples,
which OpenAI-compatible chat completions give (`n`); Anthropic's API does not.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from routellm_batch.escalation.base import EscalationScorer, Need, ScorerInputMissing, WeakAnswer
from routellm_batch.escalation.features import final_answer
from routellm_batch.escalation.invalid import first_json_value

__all__ = ["AgreementScorer", "answer_key"]

Key = Literal["final_number", "normalized", "json"]


def answer_key(answer: str, key: Key) -> str | None:
    """The part of an answer that samples are compared on (None when it has none)."""
    if key == "final_number":
        value = final_answer(answer)
        return None if value is None else repr(round(value, 6))
    if key == "normalized":
        text = unicodedata.normalize("NFKC", answer).casefold()
        text = " ".join(re.sub(r"[^\w\s.-]", " ", text).split()).strip(" .")
        return text or None
    try:
        return json.dumps(first_json_value(answer), sort_keys=True)
    except ValueError:
        return None


class AgreementScorer(EscalationScorer):
    kind = "agreement"
    needs: ClassVar[frozenset[Need]] = frozenset({"samples"})

    def __init__(self, key: Key = "final_number") -> None:
        if key not in ("final_number", "normalized", "json"):
            raise ValueError(f"agreement scorer: key must be final_number, normalized or json, not {key!r}")
        self.key: Key = key

    def config(self) -> dict[str, Any]:
        return {"key": self.key}

    def score(self, items: Sequence[WeakAnswer]) -> np.ndarray:
        out = np.empty(len(items))
        for i, item in enumerate(items):
            if not item.samples:
                raise ScorerInputMissing(
                    f"escalation scorer 'agreement': weak answer #{i} has no extra samples; ask for n > 1 weak "
                    "samples (OpenAI-compatible providers), or choose another scorer"
                )
            mine = answer_key(item.answer, self.key)
            others = [answer_key(s, self.key) for s in item.samples]
            out[i] = sum(mine is None or k != mine for k in others) / len(others)
        return out
