"""Cheap text features of a weak answer (given its prompt) that carry signal about whether it is wrong.

The prompt-only features (routers.stacked.prompt_features) say how hard a prompt looks; these look at
what the weak model actually wrote: its length and shape, hedging, whether it ends on a final answer,
whether that answer is a plain number, whether it uses the numbers the prompt gives, and whether the
arithmetic it shows is right (`<<3*60=180>>` calculator notes and plain `3 x 60 = 180` steps). A
wrong step in shown arithmetic is a strong sign of a wrong answer, and a solution that ignores a
number of the prompt often missed a step.

Light module: numpy and the standard library.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["ANSWER_FEATURES", "answer_features", "check_arithmetic", "final_answer"]

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")
_HEDGES = re.compile(
    r"\b(?:maybe|perhaps|probably|possibly|might|approximately|roughly|about|assum\w*|unclear|not sure|"
    r"cannot|can't|unable|however|wait|actually|mistake|incorrect|re-?evaluat\w*|re-?calculat\w*|"
    r"let me|let's re|i think|it seems|estimate\w*)\b",
    re.I,
)
_ANSWER_IS = re.compile(r"####|\\boxed\{|\b(?:final answer|the answer is|answer:)", re.I)
_FINAL_MARKERS = re.compile(
    r"####|\\boxed\{|\b(?:final answer|the answer is|answer:|therefore|thus|so the|in total)\b", re.I
)
# Shown arithmetic: calculator notes <<expr=value>>, and "a op b (op c...) = value" in prose.
_CALC_NOTE = re.compile(r"<<([^<>=]{1,200})=([^<>]{1,40})>>")
_NOTE_AND_RESULT = re.compile(r"=?\s*<<[^<>]{1,250}>>\s*\$?-?[\d.,]*")
_PROSE_EQUATION = re.compile(
    r"((?:\(?\s*\$?-?\d[\d,]*(?:\.\d+)?%?\s*\)?\s*[-+*/x×÷]\s*)+\(?\s*\$?-?\d[\d,]*(?:\.\d+)?%?\s*\)?)\s*=\s*"
    r"\$?(-?\d[\d,]*(?:\.\d+)?)"
)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

ANSWER_FEATURES: tuple[str, ...] = (
    "chars", "words", "lines", "numbers", "distinct_numbers", "hedges", "final_marker", "has_final_number",
    "final_not_integer", "final_negative", "final_magnitude", "final_in_prompt", "prompt_numbers_used",
    "equations", "equations_wrong", "equations_wrong_share", "repeated_lines", "answer_to_prompt_length",
)


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").rstrip("%"))
    except ValueError:
        return None


def _safe_eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _safe_eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_safe_eval(node.left), _safe_eval(node.right))
    raise ValueError("not plain arithmetic")


def _evaluate(expression: str) -> float | None:
    """The value of + - * / arithmetic on numbers (x, × and ÷ accepted), or None when it is not that."""
    text = expression.strip().replace(",", "").replace("$", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    text = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", text)
    if len(text) > 200 or not re.fullmatch(r"[\d.+\-*/()\s]+", text):
        return None
    try:
        value = _safe_eval(ast.parse(text, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


def _close(a: float, b: float) -> bool:
    # shown results are often rounded (to cents, one decimal or a whole number)
    return abs(a - b) <= 0.0051 + 1e-6 * abs(a) or any(abs(round(a, d) - b) < 1e-9 for d in (0, 1))


def check_arithmetic(answer: str) -> tuple[int, int]:
    """(equations checked, equations whose shown result is wrong) in the answer's shown arithmetic."""
    checked = wrong = 0
    # prose is read without the notes and the result each note introduces ("3 x 60 = <<3*60=180>>180")
    prose = _NOTE_AND_RESULT.sub(" ; ", answer)
    for expression, shown in _CALC_NOTE.findall(answer) + _PROSE_EQUATION.findall(prose):
        value, result = _evaluate(expression), _to_float(shown)
        if value is None or result is None:
            continue
        checked += 1
        wrong += not _close(value, result)
    return checked, wrong


def final_answer(answer: str) -> float | None:
    """The answer's final number: the first after its last explicit marker (####, \\boxed, "the answer
    is", ...), else its last number; None when it has none."""
    markers = list(_ANSWER_IS.finditer(answer))
    if markers:
        after = _NUMBER.findall(answer[markers[-1].end():])
        if after:
            return _to_float(after[0])
    found = _NUMBER.findall(answer)
    return _to_float(found[-1]) if found else None


def _numbers(text: str) -> list[float]:
    return [v for v in (_to_float(x) for x in _NUMBER.findall(text)) if v is not None]


def _one(prompt: str, answer: str) -> list[float]:
    answer_numbers = _numbers(answer)
    prompt_numbers = set(_numbers(prompt))
    answer_set = set(answer_numbers)
    final = final_answer(answer)
    checked, wrong = check_arithmetic(answer)
    lines = [ln.strip() for ln in answer.splitlines() if ln.strip()]
    used = len(prompt_numbers & answer_set) / len(prompt_numbers) if prompt_numbers else 1.0
    return [
        math.log1p(len(answer)),
        math.log1p(len(answer.split())),
        math.log1p(len(lines)),
        math.log1p(len(answer_numbers)),
        math.log1p(len(answer_set)),
        math.log1p(len(_HEDGES.findall(answer))),
        float(bool(_FINAL_MARKERS.search(answer))),
        float(final is not None),
        float(final is not None and abs(final - round(final)) > 1e-9),
        float(final is not None and final < 0),
        math.log1p(min(abs(final), 1e12)) if final is not None else 0.0,
        float(final is not None and final in prompt_numbers),
        used,
        math.log1p(checked),
        math.log1p(wrong),
        wrong / checked if checked else 0.0,
        (len(lines) - len(set(lines))) / len(lines) if lines else 0.0,
        math.log1p(len(answer)) - math.log1p(len(prompt)),
    ]


def answer_features(prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """(n, len(ANSWER_FEATURES)) float64 features of each (prompt, weak answer) pair."""
    if len(prompts) != len(answers):
        raise ValueError(f"answer_features: {len(prompts)} prompts but {len(answers)} answers")
    rows = [_one(p or "", a or "") for p, a in zip(prompts, answers, strict=True)]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(ANSWER_FEATURES))
