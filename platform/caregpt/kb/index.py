"""In-memory retrieval over chunks: BM25 (bm25s) over jieba tokens, optional dense vectors, fused by RRF.

bm25s keeps BM25 as a precomputed sparse matrix, so a query is a sum of a few rows instead of a Python
loop over documents (rank-bm25 scores every document in Python per query term, and has had no release
since 2022); it depends on numpy only. The index is rebuilt from the stored tokens when a knowledge base
opens: that takes well under a second for tens of thousands of chunks and can never disagree with the
stored chunks, which a second persisted file could after an interrupted update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from caregpt.kb.text import tokenize

RRF_K = 60  # the constant of Cormack et al.'s reciprocal-rank fusion; damps the weight of the very top ranks
CANDIDATES = 50  # ranks taken from each retriever before fusion


@dataclass(frozen=True)
class Ranked:
    position: int  # index into the chunk list the index was built from
    score: float


class SearchIndex:
    """BM25 over `tokens` and, when `vectors` and an `encoder` are given, dense + hybrid search."""

    def __init__(self, tokens: Sequence[Sequence[str]], vectors: np.ndarray | None = None, encoder=None):
        self.size = len(tokens)
        self.vectors = vectors if vectors is not None and len(vectors) == self.size and self.size else None
        self.encoder = encoder if self.vectors is not None else None
        self._bm25 = None
        if self.size:
            from caregpt._extras import require

            bm25s = require("bm25s", extra="kb", purpose="the knowledge-base BM25 index")
            self._bm25 = bm25s.BM25()
            self._bm25.index([list(t) for t in tokens], show_progress=False)

    @property
    def dense(self) -> bool:
        return self.encoder is not None

    def bm25(self, query_tokens: Sequence[str], limit: int) -> list[Ranked]:
        """Chunks that share at least one token with the query, best first."""
        if self._bm25 is None:
            return []
        # each distinct query word counts once: a patient who repeats 高血压 five times should not drown out
        # the other words of the query (short queries, the usual case, are unaffected)
        ids = self._bm25.get_tokens_ids(list(dict.fromkeys(query_tokens)))
        if not ids:
            return []
        scores = self._bm25.get_scores_from_ids(ids)
        return _top(scores, limit, positive_only=True)

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk (zeros when no query word is indexed)."""
        if self._bm25 is None:
            return np.zeros(0, np.float32)
        ids = self._bm25.get_tokens_ids(list(dict.fromkeys(tokenize(query))))
        return self._bm25.get_scores_from_ids(ids) if ids else np.zeros(self.size, np.float32)

    def vector(self, query: str, limit: int) -> list[Ranked]:
        if self.encoder is None:
            return []
        query_vector = self.encoder.encode([query])[0]
        return _top(self.vectors @ query_vector, limit, positive_only=False)

    def search(self, query: str, k: int, mode: str = "auto") -> list[Ranked]:
        """Top-k chunks. mode: bm25, dense, hybrid, or auto (hybrid when vectors exist, else bm25).

        Scores: the BM25 score for bm25, the cosine for dense, the RRF sum for hybrid (comparable only
        within one result list).
        """
        if mode not in ("auto", "bm25", "dense", "hybrid"):
            raise ValueError(f"unknown search mode {mode!r} (valid: auto, bm25, dense, hybrid)")
        if mode == "auto":
            mode = "hybrid" if self.dense else "bm25"
        if mode in ("dense", "hybrid") and not self.dense:
            raise ValueError("this index has no vectors: ingest with an encoder (--embed-model or --embed-url)")
        if k <= 0 or not self.size:
            return []
        if mode == "bm25":
            return self.bm25(tokenize(query), k)
        if mode == "dense":
            return self.vector(query, k)
        limit = max(CANDIDATES, k)
        return reciprocal_rank_fusion([self.bm25(tokenize(query), limit), self.vector(query, limit)], k)


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Ranked]], k: int, rrf_k: int = RRF_K) -> list[Ranked]:
    """Sum of 1 / (rrf_k + rank) over the lists a chunk appears in; rank-based, so score scales never mix."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item.position] = fused.get(item.position, 0.0) + 1.0 / (rrf_k + rank)
    ordered = sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
    return [Ranked(position, score) for position, score in ordered[:k]]


def _top(scores: np.ndarray, limit: int, positive_only: bool) -> list[Ranked]:
    scores = np.asarray(scores, dtype=np.float64)
    if positive_only:
        candidates = np.flatnonzero(scores > 0)
    else:
        candidates = np.arange(len(scores))
    if not len(candidates):
        return []
    # stable order: score descending, then position ascending, so equal scores rank reproducibly
    order = candidates[np.lexsort((candidates, -scores[candidates]))][:limit]
    return [Ranked(int(i), float(scores[i])) for i in order]
