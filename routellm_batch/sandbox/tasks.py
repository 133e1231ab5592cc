"""A synthetic workload with a hidden, learnable rule, and a judge that grades it.

The task: yes/no questions about short reviews ("Is this review of the <topic> positive?"), each
with its gold answer in a `reference` column (`task_prompts`). `TaskResponder` plays every model:

- task prompts: the strong models answer correctly almost always; the weak models do too, except
  on the hidden topics (`HIDDEN_TOPICS`, known only here), where they mostly get it wrong. A router
  can learn that rule from the prompts' words; prompt length says nothing about it.
- judge prompts, in the MT-bench judges' grammar (FastChat's pair-v2 and single-v1 prompts):
  pairwise ("[[A]]", "[[B]]", "[[C]]" = tie) and single-answer ("Rating: [[k]]", here 1 to 5). The judge
  knows which answer is right; when both are equally right it prefers the first position with
  `position_bias` probability (a real judge's best-known flaw), else says tie. A share
  `malformed_share` of its verdicts follow no grammar at all.
- anything else goes to a `SyntheticResponder`.

Same request -> same answer (every draw is seeded by a hash of the request). Light module: stdlib only.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from routellm_batch.sandbox.responders import Answer, ChatRequest, SyntheticResponder, _finish

__all__ = ["HIDDEN_TOPICS", "TOPICS", "TaskResponder", "gold_answer", "task_prompts"]

TOPICS = (
    "waterproof hiking boots", "electric coffee grinder", "downtown city bus line", "neighborhood pizza place",
    "adjustable desk lamp", "shockproof phone case", "expanding garden hose", "weekend beginner yoga class",
    "maritime insurance policy", "patent licensing agreement", "derivatives prospectus", "probate court filing",
)
# The rule the weak model fails on: dense legal/financial documents.
HIDDEN_TOPICS = frozenset(
    {"maritime insurance policy", "patent licensing agreement", "derivatives prospectus", "probate court filing"}
)
_POSITIVE = ("works exactly as promised", "I would gladly buy it again", "clear, fair and well made",
             "exceeded what I hoped for", "a pleasure from start to finish")
_NEGATIVE = ("broke within a week", "I regret every cent", "confusing and badly made",
             "far worse than advertised", "a disappointment from start to finish")
_FILLER = ("Honestly,", "To be fair,", "After a month,", "In short,", "Overall,", "Frankly,", "")
_TASK = re.compile(r"^Review #(?P<n>\d+) of the (?P<topic>[a-z ]+): \"(?P<text>[^\"]*)\"\nIs this review positive\? "
                   r"Answer yes or no\.$")


def task_prompts(n: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """`n` task rows: prompt_id, prompt, topic, reference ("yes"/"no"); deterministic for the seed."""
    rng = random.Random(seed)
    for i in range(n):
        topic = rng.choice(TOPICS)
        positive = rng.random() < 0.5
        phrase = rng.choice(_POSITIVE if positive else _NEGATIVE)
        # Filler makes lengths vary independently of the topic, so length cannot find the hard rows.
        text = " ".join(w for w in (rng.choice(_FILLER), phrase, rng.choice(_FILLER)) if w) + "."
        prompt = f"Review #{i} of the {topic}: \"{text}\"\nIs this review positive? Answer yes or no."
        yield {"prompt_id": f"t{seed}-{i:05d}", "prompt": prompt, "topic": topic,
               "reference": "yes" if positive else "no"}


def gold_answer(prompt: str) -> str | None:
    """The right answer of a task prompt ("yes"/"no"), None for any other text."""
    m = _TASK.match(prompt.strip())
    if m is None:
        return None
    return "yes" if any(p in m.group("text") for p in _POSITIVE) else "no"


def _topic(prompt: str) -> str | None:
    m = _TASK.match(prompt.strip())
    return None if m is None else m.group("topic")


# The judges' grammars (FastChat llm_judge prompts, as the real judges are asked).
_PAIR = re.compile(
    r"\[User Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant A's Answer\]\n(?P<a>.*?)\n"
    r"\[The End of Assistant A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(?P<b>.*?)\n"
    r"\[The End of Assistant B's Answer\]",
    re.S,
)
_SINGLE = re.compile(
    r"\[Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant's Answer\]\n(?P<a>.*?)\n\[The End of Assistant's Answer\]",
    re.S,
)
_MALFORMED = ("Both assistants make reasonable points; it is hard to say.",
              "Verdict: assistant A, probably.", "Rating: [[excellent]]", "")


def _right(question: str, answer: str) -> bool | None:
    gold = gold_answer(question)
    if gold is None:
        return None
    said = re.findall(r"\b(yes|no)\b", answer.lower())
    return bool(said) and said[-1] == gold


@dataclass(frozen=True)
class TaskResponder:
    """Answers task prompts per the hidden rule, judge prompts per the judge's grammar, the rest synthetically."""

    weak_models: Collection[str] = field(default_factory=frozenset)
    seed: int = 0
    strong_accuracy: float = 0.95
    weak_accuracy: float = 0.93
    weak_accuracy_hidden: float = 0.15
    position_bias: float = 0.35
    malformed_share: float = 0.03
    fallback: SyntheticResponder = field(default_factory=SyntheticResponder)

    def _rng(self, request: ChatRequest, salt: str = "") -> random.Random:
        key = repr((self.seed, salt, request.model, request.system, request.messages)).encode()
        return random.Random(hashlib.sha256(key).digest())

    def respond(self, request: ChatRequest) -> Answer:
        prompt = request.prompt
        if _PAIR.search(prompt) or _SINGLE.search(prompt):
            return _finish(request, self._judge(request))
        gold = gold_answer(prompt)
        if gold is None:
            return self.fallback.respond(request)
        if request.model in self.weak_models:
            accuracy = self.weak_accuracy_hidden if _topic(prompt) in HIDDEN_TOPICS else self.weak_accuracy
        else:
            accuracy = self.strong_accuracy
        rng = self._rng(request)
        said = gold if rng.random() < accuracy else ("no" if gold == "yes" else "yes")
        # Answers vary in case and wording, as real ones do: matchers must normalize.
        return _finish(request, rng.choice(("{}", "{}.", "Answer: {}", "{} - the review is clear")).format(
            said.capitalize() if rng.random() < 0.5 else said))

    def _judge(self, request: ChatRequest) -> str:
        rng = self._rng(request, "judge")
        if rng.random() < self.malformed_share:
            return rng.choice(_MALFORMED)
        pair = _PAIR.search(request.prompt)
        if pair is not None:
            a_right = _right(pair.group("q"), pair.group("a"))
            b_right = _right(pair.group("q"), pair.group("b"))
            if a_right is not None and a_right != b_right:
                verdict = "A" if a_right else "B"
            else:
                verdict = "A" if rng.random() < self.position_bias else "C"
            if verdict == "C":
                return "Both answers are equally good. [[C]]"
            return f"Assistant {verdict} reads the review more carefully. [[{verdict}]]"
        single = _SINGLE.search(request.prompt)
        assert single is not None
        right = _right(single.group("q"), single.group("a"))
        grade = rng.choice((4, 5, 5)) if right else rng.choice((1, 1, 2)) if right is False else 3
        return f"The answer is {'correct' if right else 'not correct'}. Rating: [[{grade}]]"
