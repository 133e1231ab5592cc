"""Token log-probabilities for the sandbox's OpenAI-compatible answers (`logprobs: true`, `top_logprobs: k`).

A responder that knows whether its answer is right (a replay of recorded answers with their
correctness) makes wrong answers less confident, with noise, as real models are on average: the
answer's confidence (geometric mean token probability) is drawn around 0.93 when right, 0.70 when
wrong, 0.85 when unknown (spread 0.08), deterministically from the request. The tokens' log-
probabilities then scatter around log(confidence) with exactly that mean, and each token's top
alternatives share the probability it leaves. Shapes follow openai.types.chat.ChatCompletionTokenLogprob.

Light module: standard library only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from typing import Any

from routellm_batch.sandbox.responders import Answer, ChatRequest

__all__ = ["MAX_TOP_LOGPROBS", "logprobs_content", "with_confidence"]

MAX_TOP_LOGPROBS = 20
_CENTER = {True: 0.93, False: 0.70, None: 0.85}
_SPREAD = 0.08
# The stand-in tokenizer's tokens (responders.count_tokens), each with the whitespace before it.
_PIECE = re.compile(r"\s*(?:\w+|[^\w\s])")
_FILLERS = ("the", "a", "so", "then", "is", ",", ".", "and", "to", "of")


def _rng(*parts: object) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).digest())


def with_confidence(request: ChatRequest, answer: Answer, responder: Any) -> Answer:
    """`answer` carrying its confidence and the requested number of alternatives, when the request
    asks for logprobs; a responder with a `correct(request)` method (True / False / None) steers it."""
    if not request.logprobs:
        return answer
    judge = getattr(responder, "correct", None)
    correct = judge(request) if callable(judge) else None
    draw = _rng("confidence", request.model, request.system, request.messages).gauss(_CENTER[correct], _SPREAD)
    return dataclasses.replace(answer, confidence=min(max(draw, 0.05), 0.999), top_logprobs=request.top_logprobs)


def _alternative(token: str, j: int, rng: random.Random) -> str:
    lead = token[: len(token) - len(token.lstrip())]
    core = token.strip()
    if core.isdigit():
        return f"{lead}{int(core) + j}"
    choice = rng.choice([f for f in _FILLERS if f != core] or ["_"])
    return f"{lead}{choice}{'' if j == 1 else j}"


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def logprobs_content(text: str, confidence: float, top_logprobs: int) -> list[dict[str, Any]]:
    """`choices[0].logprobs.content` for `text`: one entry per token, mean log-probability log(confidence)."""
    pieces = _PIECE.findall(text)
    if not pieces:
        return []
    rng = _rng("tokens", text, round(confidence, 9))
    weights = [rng.expovariate(1.0) for _ in pieces]
    scale = len(weights) / sum(weights)
    mean = math.log(confidence)
    content = []
    for piece, weight in zip(pieces, weights, strict=True):
        logprob = max(mean * weight * scale, -30.0)
        entry = _entry(piece, logprob)
        left = 1.0 - math.exp(logprob)
        shares = sorted((rng.random() for _ in range(max(top_logprobs - 1, 0))), reverse=True)
        alternatives = [_entry(piece, logprob)] if top_logprobs else []
        for j, share in enumerate(shares, start=1):
            p = left * share / (1 + sum(shares))
            alternatives.append(_entry(_alternative(piece, j, rng), math.log(p) if p > 0 else -9999.0))
        entry["top_logprobs"] = sorted(alternatives, key=lambda a: -a["logprob"])
        content.append(entry)
    return content
