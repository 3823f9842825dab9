"""Sentence splitting, chunking and tokenization for Chinese (and English) text.

Chunks end on sentence boundaries (。！？；, line breaks, and English . ! ? ; followed by a space) so a
retrieved chunk reads as whole sentences; only a single sentence longer than the chunk size is cut
mid-sentence. Tokens come from jieba's search mode, which emits both a compound word and its parts
(消化内科 -> 消化, 内科, 消化内科), so a query word matches a longer document word and vice versa.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata

# A sentence ends after a Chinese terminator (plus any closing quotes/brackets), after an English
# terminator that is followed by whitespace (so "3.5 mg" and "e.g." inside a word stay whole), or at a
# line break.
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])[”’」』）)\]]*|(?<=[.!?;])(?=\s)|\n+")

# Words that carry no meaning for retrieval; jieba emits them as separate tokens. Kept short on purpose:
# BM25's inverse document frequency already discounts common words, this only removes pure glue.
STOPWORDS = frozenset(
    "的 了 是 在 和 与 及 或 等 也 都 就 还 又 而 并 但 之 其 这 那 这个 那个 一个 有 没 被 把 给 对 于 为 以 "
    "吗 呢 吧 啊 呀 哦 嗯 么 着 过 个 些 你 您 我 他 她 它 我们 你们 他们 the a an of to and or is are was "
    "were be been in on at for with by as it this that i you he she we they my your".split()
)

_jieba_lock = threading.Lock()
_jieba_ready = False


def split_sentences(text: str) -> list[str]:
    """Split text into sentences, each keeping its terminator; whitespace-only pieces are dropped."""
    pieces: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end > start:
            pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def chunk_text(text: str, chunk_size: int = 300, overlap: int = 50) -> list[str]:
    """Pack whole sentences into chunks of at most `chunk_size` characters.

    Consecutive chunks share up to `overlap` characters of trailing sentences, so a fact that spans a
    boundary is still found whole in one of them. A sentence longer than `chunk_size` is cut into
    windows of `chunk_size` that overlap by `overlap` characters.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be in [0, chunk_size), got overlap={overlap}, chunk_size={chunk_size}")
    sentences: list[str] = []
    for sentence in split_sentences(text):
        if len(sentence) <= chunk_size:
            sentences.append(sentence)
            continue
        step = chunk_size - overlap
        for start in range(0, len(sentence), step):
            sentences.append(sentence[start : start + chunk_size])
            if start + chunk_size >= len(sentence):
                break

    chunks: list[str] = []
    current: list[str] = []
    for sentence in sentences:
        if current and _joined_len(current + [sentence]) > chunk_size:
            chunks.append(_join(current))
            # carry trailing sentences into the next chunk while they fit in the overlap budget
            carried: list[str] = []
            for previous in reversed(current):
                if _joined_len([previous] + carried) > overlap or _joined_len([previous] + carried + [sentence]) > chunk_size:
                    break
                carried.insert(0, previous)
            current = carried
        current.append(sentence)
    if current:
        chunks.append(_join(current))
    return chunks


def _join(sentences: list[str]) -> str:
    # Chinese sentences join without a space; English ones need one to stay readable.
    out = sentences[0]
    for sentence in sentences[1:]:
        out += (" " if out[-1].isascii() and sentence[0].isascii() else "") + sentence
    return out


def _joined_len(sentences: list[str]) -> int:
    return len(_join(sentences)) if sentences else 0


def _ensure_jieba():
    """Import jieba once, quietly (it logs its dictionary loading at INFO/DEBUG on first use)."""
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        with _jieba_lock:
            if not _jieba_ready:
                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                _jieba_ready = True
    return jieba


def tokenize(text: str) -> list[str]:
    """Lower-cased jieba search-mode tokens without punctuation, whitespace or stopwords."""
    jieba = _ensure_jieba()
    text = unicodedata.normalize("NFKC", text).lower()
    tokens = []
    for token in jieba.lcut_for_search(text):
        token = token.strip()
        if not token or token in STOPWORDS or not any(ch.isalnum() for ch in token):
            continue
        tokens.append(token)
    return tokens
