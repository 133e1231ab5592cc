"""Hashed TF-IDF of word unigrams and bigrams: the `words` learner of the embed_ridge router.

On task-like workloads the words themselves (a subject, a kind of question, a keyword of the
instructions) carry more of the routing signal than an averaged word embedding, which blurs them
(measured on RouteLLM's MMLU and GSM8K at 1,000 labels: benchmarks/learning_curve.py).

Lower-cased `\\w+` tokens and single punctuation marks, their unigrams and adjacent bigrams, hashed
with CRC32 (stable across processes, unlike `hash`) into HASH_DIM columns; sublinear term frequency
log1p(count), times the smoothed idf of the training prompts, then each row scaled to unit length.
A feature never seen in training gets the largest idf, log(1 + n_docs) + 1: it weighs in a row's
length as it did at training time, and has no coefficient. Numpy and scipy.sparse only.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["HASH_DIM", "HashedTfidf", "hashed_counts"]

HASH_DIM = 1 << 18
_TOKEN = re.compile(r"\w+|[^\w\s]")


def hashed_counts(texts: Sequence[str]) -> sp.csr_matrix:
    """(n, HASH_DIM) CSR of log1p(count) of each hashed unigram and bigram."""
    indptr, columns = [0], []
    for text in texts:
        tokens = _TOKEN.findall(text.lower())
        grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]
        columns.extend(zlib.crc32(g.encode()) % HASH_DIM for g in grams)
        indptr.append(len(columns))
    X = sp.csr_matrix((np.ones(len(columns)), np.asarray(columns, dtype=np.int64), np.asarray(indptr)),
                      shape=(len(texts), HASH_DIM))
    X.sum_duplicates()
    X.data = np.log1p(X.data)
    return X


class HashedTfidf:
    """idf fitted on training prompts; `transform` gives unit-length TF-IDF rows (CSR)."""

    def __init__(self, index: np.ndarray, idf: np.ndarray, n_docs: int) -> None:
        self.index = np.asarray(index, dtype=np.int64)  # the columns seen in training, sorted
        self.idf_seen = np.asarray(idf, dtype=np.float64)
        self.n_docs = int(n_docs)
        self._idf: np.ndarray | None = None

    @classmethod
    def fit(cls, counts: sp.csr_matrix) -> HashedTfidf:
        df = np.bincount(counts.indices, minlength=HASH_DIM)
        index = np.flatnonzero(df)
        n = counts.shape[0]
        return cls(index, np.log((1.0 + n) / (1.0 + df[index])) + 1.0, n)

    @property
    def unseen_idf(self) -> float:
        return float(np.log(1.0 + self.n_docs) + 1.0)

    def idf(self) -> np.ndarray:
        if self._idf is None:
            full = np.full(HASH_DIM, self.unseen_idf)
            full[self.index] = self.idf_seen
            self._idf = full
        return self._idf

    def transform(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        X = counts.multiply(self.idf()[None, :]).tocsr()
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X)
