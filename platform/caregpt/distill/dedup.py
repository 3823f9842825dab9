"""Exact and near-duplicate removal, first come first kept.

Exact: texts equal after normalisation (NFKC, lower case, whitespace and punctuation removed).
Near: character n-gram Jaccard similarity >= threshold. Comparing every pair is quadratic, so candidates come
from MinHash with locality-sensitive hashing (64 hash functions in 16 bands of 4 rows: pairs at Jaccard 0.85
share a band with probability > 0.9999, pairs at 0.3 rarely do), and every candidate pair is then checked with
the exact Jaccard of its n-gram sets, so a kept decision never rests on the estimate alone.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import defaultdict

import numpy as np

NUM_PERM = 64
BANDS = 16
PRIME = (1 << 31) - 1  # hash values below 2^31 keep a*x+b inside int64
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, n: int) -> set[str]:
    norm = normalise(text)
    if len(norm) <= n:
        return {norm} if norm else set()
    return {norm[i:i + n] for i in range(len(norm) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class MinHasher:
    def __init__(self, num_perm: int = NUM_PERM, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, PRIME, size=num_perm, dtype=np.int64)
        self.b = rng.integers(0, PRIME, size=num_perm, dtype=np.int64)

    def signature(self, grams: set[str]) -> np.ndarray:
        if not grams:
            return np.full(len(self.a), PRIME, dtype=np.int64)
        # a stable hash (not Python's per-process salted hash): the same text gets the same signature every run
        values = np.fromiter(
            (int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=4).digest(), "little") & 0x7FFFFFFF for g in grams),
            dtype=np.int64, count=len(grams),
        )
        return ((self.a[:, None] * values[None, :] + self.b[:, None]) % PRIME).min(axis=1)


def find_duplicates(texts: list[str], threshold: float = 0.85, ngram: int = 3) -> dict[int, tuple[str, int]]:
    """index -> (reason 'exact_duplicate' | 'near_duplicate', index of the earlier kept text)."""
    dropped: dict[int, tuple[str, int]] = {}
    exact: dict[str, int] = {}
    hasher = MinHasher()
    rows = NUM_PERM // BANDS
    buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(BANDS)]
    kept_grams: dict[int, set[str]] = {}
    for index, text in enumerate(texts):
        key = hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()
        if key in exact:
            dropped[index] = ("exact_duplicate", exact[key])
            continue
        if threshold <= 0:
            exact[key] = index
            continue
        grams = shingles(text, ngram)
        signature = hasher.signature(grams)
        band_keys = [signature[b * rows:(b + 1) * rows].tobytes() for b in range(BANDS)]
        candidates = sorted({j for b, k in enumerate(band_keys) for j in buckets[b].get(k, ())})
        match = next((j for j in candidates if jaccard(grams, kept_grams[j]) >= threshold), None)
        if match is not None:
            dropped[index] = ("near_duplicate", match)
            continue
        exact[key] = index
        kept_grams[index] = grams
        for b, k in enumerate(band_keys):
            buckets[b][k].append(index)
    return dropped


def record_text(record: dict) -> str:
    """The text two records are compared on: everything a model would be trained on."""
    if "content" in record:
        return record["content"]
    parts = [t for pair in record.get("history", []) for t in pair]
    parts += [record.get("instruction", ""), record.get("input", "")]
    output = record.get("output", "")
    parts += output if isinstance(output, list) else [output]
    return "\n".join(parts)
