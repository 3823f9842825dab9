"""`KnowledgeBase`: a read-only, in-memory view of an ingested knowledge base, for search.

`KnowledgeBase.open(DIR)` loads the chunks stored by `caregpt kb ingest` (see store.py) and builds the
search index; `KnowledgeBase.from_texts(...)` builds the same thing from texts in memory (triage does
this over the department guides). Ingest (writing) lives in ingest.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caregpt.kb.embed import encoder_from_spec
from caregpt.kb.index import SearchIndex
from caregpt.kb.store import DB_NAME, ChunkRow, Store
from caregpt.kb.text import chunk_text, tokenize

DEFAULT_CHUNK_SIZE = 300  # characters: about a paragraph of Chinese, well inside any model's context
DEFAULT_OVERLAP = 50


class KnowledgeBaseError(Exception):
    """A knowledge base is missing, unreadable, or asked for something it cannot do."""


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. `score` is comparable only within one result list (BM25, cosine or RRF)."""

    doc_id: str  # the document: "<source>" or "<source>#<record>" for a record of a json/jsonl file
    source: str  # the file it came from, as named in citations
    chunk_id: int  # position of the chunk inside its document, from 0
    text: str
    score: float


class KnowledgeBase:
    """Chunks plus their search index. Thread-safe for concurrent `search` calls (read-only)."""

    def __init__(self, chunks: Sequence[ChunkRow], encoder=None, path: Path | None = None, info: dict | None = None):
        self.path = path
        self.chunks = list(chunks)
        vectors = None
        if encoder is not None and self.chunks and all(c.vector is not None for c in self.chunks):
            vectors = np.stack([c.vector for c in self.chunks])
        self.index = SearchIndex([c.tokens for c in self.chunks], vectors, encoder)
        self._info = info or {}

    @classmethod
    def open(cls, path: str | Path) -> KnowledgeBase:
        """Open a knowledge base made by `caregpt kb ingest --kb PATH`; raises KnowledgeBaseError if there is none."""
        directory = Path(path)
        if not (directory / DB_NAME).is_file():
            raise KnowledgeBaseError(
                f"no knowledge base at {directory} (missing {DB_NAME}): create one with "
                f"`caregpt kb ingest --kb {directory} FILES_OR_DIRS...`"
            )
        try:
            store = Store.open(directory, readonly=True)
        except (ValueError, OSError) as err:
            raise KnowledgeBaseError(str(err)) from None
        try:
            info = {
                **store.counts(),
                "settings": store.get_meta("settings", {}),
                "encoder": store.get_meta("encoder"),
            }
            chunks = list(store.chunks())
        finally:
            store.close()
        return cls(chunks, encoder_from_spec(info["encoder"]), directory, info)

    @classmethod
    def from_texts(
        cls,
        documents: Sequence[tuple[str, str, str]],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        overlap: int = DEFAULT_OVERLAP,
        encoder=None,
    ) -> KnowledgeBase:
        """An in-memory knowledge base from (doc_id, source, text) triples."""
        rows = [
            (doc_id, source, n, piece)
            for doc_id, source, text in documents
            for n, piece in enumerate(chunk_text(text, chunk_size, overlap))
        ]
        vectors = encoder.encode([r[3] for r in rows]) if encoder is not None and rows else None
        chunks = [
            ChunkRow(doc_id, source, n, piece, tokenize(piece), None if vectors is None else vectors[i])
            for i, (doc_id, source, n, piece) in enumerate(rows)
        ]
        info = {"files": 0, "documents": len(documents), "chunks": len(chunks), "encoder": encoder and encoder.spec()}
        info["settings"] = {"chunk_size": chunk_size, "overlap": overlap}
        return cls(chunks, encoder, None, info)

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks

    def search(self, query: str, k: int = 5, mode: str = "auto") -> list[Hit]:
        """The k best chunks for `query` (fewer when fewer match; [] on an empty knowledge base).

        mode: auto (hybrid when the knowledge base has vectors, else bm25), bm25, dense, hybrid.
        """
        try:
            ranked = self.index.search(query, k, mode)
        except ValueError as err:
            raise KnowledgeBaseError(str(err)) from None
        return [self._hit(r.position, r.score) for r in ranked]

    def _hit(self, position: int, score: float) -> Hit:
        chunk = self.chunks[position]
        return Hit(chunk.doc_id, chunk.source, chunk.chunk_id, chunk.text, float(score))

    def info(self) -> dict:
        """Counts, chunking settings and encoder, for `caregpt kb info` and health checks."""
        return {"path": str(self.path) if self.path else None, **self._info, "dense": self.index.dense}
