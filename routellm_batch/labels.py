"""Labelling machinery shared by `learn` (and the audit and cascade policies): reference matchers,
the judge's prompts and grammars, and verdicts turned into per-model outcomes.

- Reference mode: each model's answer is 1/0 against a gold value, by a matcher (`match_reference`).
- Judge mode, pairwise: asked twice, the answers swapped in the second request, so a judge's
  position bias cancels (`pairwise_outcome`); ties allowed. Single: each answer graded 1-5.
  The prompts follow the MT-bench judges (FastChat llm_judge, pair-v2 / single-v1), whose grammars
  are "[[A]]" / "[[B]]" / "[[C]]" (tie) and "Rating: [[k]]". A verdict that does not parse is None:
  the caller records an error row with the judge's text, never a guess.

Light module: stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "MATCHERS",
    "PAIRWISE_SYSTEM",
    "SINGLE_SYSTEM",
    "AuditEstimate",
    "JUDGE_KEYS",
    "Verdict",
    "audit_estimate",
    "in_audit_slice",
    "judge_label",
    "judge_request",
    "match_reference",
    "pairwise_outcome",
    "pairwise_prompt",
    "parse_grade",
    "parse_pairwise",
    "router_provenance_line",
    "single_prompt",
]

Verdict = Literal["A", "B", "C"]
MATCHERS = ("exact", "normalized", "regex", "json_field", "number")
LEARN_REPORT = "learn_report.json"

PAIRWISE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. After providing your explanation, output your "
    'final verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B '
    'is better, and "[[C]]" for a tie.'
)
SINGLE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question displayed below. After providing your explanation, you must rate the response on a scale "
    'of 1 to 5 by strictly following this format: "[[rating]]", for example: "Rating: [[4]]".'
)


def question_text(row: Mapping[str, Any]) -> str:
    """The question a row asks, for a judge or a scorer: its prompt, else its chat messages as `role: content` lines."""
    if row.get("prompt") is not None:
        return str(row["prompt"])
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in row.get("messages") or [])


def pairwise_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return (
        f"[User Question]\n{question}\n\n"
        f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
    )


def single_prompt(question: str, answer: str) -> str:
    return f"[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"


_PAIR_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_GRADE = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def parse_pairwise(text: str | None) -> Verdict | None:
    """The judge's verdict; None when it gives none, or several different ones."""
    found = set(_PAIR_VERDICT.findall(text or ""))
    return found.pop() if len(found) == 1 else None  # type: ignore[return-value]


def parse_grade(text: str | None) -> float | None:
    """The 1-5 grade; None when there is none, several different ones, or one out of range."""
    found = {float(g) for g in _GRADE.findall(text or "")}
    if len(found) != 1:
        return None
    grade = found.pop()
    return grade if 1.0 <= grade <= 5.0 else None


def pairwise_outcome(strong_first: Verdict, weak_first: Verdict) -> tuple[float, float]:
    """(strong, weak) outcome from the two orders: each order votes +1 / -1 / 0 for the strong answer;
    the sum decides (win 1/0, loss 0/1, tie 0.5/0.5). A judge that always picks the first position
    votes once for each side, which is a tie: its bias cancels."""
    vote = {"A": 1, "B": -1, "C": 0}
    total = vote[strong_first] - vote[weak_first]
    if total > 0:
        return 1.0, 0.0
    if total < 0:
        return 0.0, 1.0
    return 0.5, 0.5


JUDGE_KEYS = {"pairwise": ("sw", "ws"), "single": ("s", "w")}
"""The judge requests per prompt: pairwise strong-first and weak-first; single the strong and the weak answer."""


def judge_request(mode: str, key: str, question: str, strong_answer: str, weak_answer: str) -> tuple[str, str]:
    """(system, user prompt) of one judge request; `key` is one of JUDGE_KEYS[mode]."""
    if mode == "pairwise":
        a, b = (strong_answer, weak_answer) if key == "sw" else (weak_answer, strong_answer)
        return PAIRWISE_SYSTEM, pairwise_prompt(question, a, b)
    return SINGLE_SYSTEM, single_prompt(question, strong_answer if key == "s" else weak_answer)


def judge_label(mode: str, texts: Mapping[str, str | None]) -> tuple[float, float] | str:
    """(strong, weak) outcome from the judge's answers by key, or the reason it cannot be read
    (naming the judge's text): an unreadable verdict is an error, never a guess."""
    first, second = JUDGE_KEYS[mode]
    parse = parse_pairwise if mode == "pairwise" else parse_grade
    parsed = {k: parse(texts.get(k)) for k in (first, second)}
    bad = [k for k, v in parsed.items() if v is None]
    if bad:
        return "; ".join(f"judge verdict {k} unreadable: {texts.get(k)!r}" for k in bad)
    if mode == "pairwise":
        return pairwise_outcome(parsed[first], parsed[second])  # type: ignore[arg-type]
    return float(parsed[first]), float(parsed[second])  # type: ignore[arg-type]


# -- reference matchers ------------------------------------------------------------------------------

def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s.-]", " ", text)
    return " ".join(text.split()).strip(" .")


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _json_field(text: str, path: str) -> Any:
    start = text.find("{")
    if start < 0:
        return None
    try:
        node: Any = json.JSONDecoder().raw_decode(text[start:])[0]
    except json.JSONDecodeError:
        return None
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def match_reference(
    answer: str | None,
    reference: Any,
    matcher: str,
    *,
    pattern: str | None = None,
    field: str | None = None,
    tolerance: float = 0.0,
) -> bool:
    """1/0 of one answer against the gold `reference`:
    exact (after stripping whitespace); normalized (case, accents, punctuation and spacing ignored);
    regex (the pattern's first group, or the whole match, found in the answer, compared normalized);
    json_field (the dotted `field` of the first JSON object in the answer, compared normalized);
    number (the last number in the answer within `tolerance` of the reference)."""
    if answer is None or reference is None or (isinstance(reference, float) and math.isnan(reference)):
        return False
    gold = str(reference)
    if matcher == "exact":
        return answer.strip() == gold.strip()
    if matcher == "normalized":
        return _normalize(answer) == _normalize(gold)
    if matcher == "regex":
        assert pattern is not None
        m = re.search(pattern, answer, re.I | re.S)
        if m is None:
            return False
        return _normalize(m.group(1) if m.groups() else m.group(0)) == _normalize(gold)
    if matcher == "json_field":
        assert field is not None
        value = _json_field(answer, field)
        return value is not None and _normalize(str(value)) == _normalize(gold)
    if matcher == "number":
        got, want = _last_number(answer), _last_number(gold)
        return got is not None and want is not None and abs(got - want) <= tolerance
    raise ValueError(f"unknown matcher {matcher!r}; allowed: {', '.join(MATCHERS)}")


# -- the nightly audit slice -------------------------------------------------------------------------

def in_audit_slice(prompt_id: str, share: float, salt: str = "") -> bool:
    """Whether a routed prompt is also answered by the other model tonight: a hash of its id, so the
    same prompts are chosen on every re-run, and a share `share` of each queue on average."""
    digest = hashlib.sha256(f"audit\x00{salt}\x00{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass(frozen=True)
class AuditEstimate:
    """Tonight's routing against all-strong, from the audited weak-queue prompts (outcome units: accuracy,
    win rate or grade). Intervals are 95% bootstrap percentiles over the audited prompts."""

    audited: int
    weak_share: float
    weak_queue_gap: float
    """Mean (strong - weak) outcome on the weak queue: what the weak model costs there per prompt."""
    weak_queue_gap_ci: tuple[float, float]
    routed_minus_all_strong: float
    """Estimated mean outcome of the routed run minus that of all-strong, over every routed prompt."""
    routed_minus_all_strong_ci: tuple[float, float]


def audit_estimate(strong: Sequence[float], weak: Sequence[float], weak_share: float,
                   resamples: int = 1000, seed: int = 0) -> AuditEstimate:
    """The strong queue gets the strong answer, so only the weak queue differs from all-strong: the
    run's gap is the weak queue's mean gap times its share of the routed prompts."""
    if len(strong) != len(weak) or not strong:
        raise ValueError("audit_estimate: give one strong and one weak outcome per audited prompt (at least one)")
    gaps = [s - w for s, w in zip(strong, weak, strict=True)]
    rng = random.Random(seed)
    n = len(gaps)
    means = sorted(sum(rng.choices(gaps, k=n)) / n for _ in range(resamples))
    lo, hi = means[int(0.025 * (resamples - 1))], means[int(math.ceil(0.975 * (resamples - 1)))]
    gap = sum(gaps) / n
    return AuditEstimate(n, weak_share, gap, (lo, hi), -weak_share * gap, (-weak_share * hi, -weak_share * lo))


# -- is the configured router measured on this job? -----------------------------------------------

def router_provenance_line(config: Any, audited: bool = False) -> str | None:
    """One line for the run summary when the configured router was never measured on this job's
    prompts (no learn report for this job next to its checkpoint, and `audited` False: no audit slice
    labelled tonight's routing); None when it was."""
    if audited:
        return None
    checkpoint = config.router.checkpoint
    if checkpoint is not None and "://" not in checkpoint:
        report = Path(checkpoint) / LEARN_REPORT
        if report.is_file():
            try:
                if json.loads(report.read_text()).get("job_name") == config.job_name:
                    return None
            except (OSError, ValueError):
                pass
    name = config.router.kind if checkpoint is None else f"{config.router.kind} ({checkpoint})"
    return (
        f"router {name} has never been measured on this job's prompts (no learn report, no audit): its routing "
        f"quality here is unknown; run `routellm-batch learn --config C --sample N --out DIR` to measure and learn "
        f"one, or configure `audit:` to measure it every night"
    )
