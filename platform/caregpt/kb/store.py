"""The on-disk knowledge base: one SQLite file (DIR/kb.sqlite) holding files, chunks, tokens and vectors.

Why SQLite: it ships with Python, needs no server, and replaces one file's chunks in a single
transaction, so an interrupted ingest leaves the previous state intact and readers (serving replicas)
never see half an update. Vectors are float32 BLOBs beside their chunk rather than a separate .npy
file, for the same reason: chunks and vectors cannot drift apart. At the sizes a hospital knowledge
base reaches (10^4-10^5 chunks) loading everything into memory on open is fast; a vector store such as
LanceDB or FAISS would pay off only far beyond that.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DB_NAME = "kb.sqlite"
SCHEMA_VERSION = 1
_TOKEN_SEP = "\x1f"  # ASCII unit separator: never inside a jieba token (tokens are stripped of whitespace)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,          -- absolute path: the identity of a file across ingests
    source TEXT NOT NULL UNIQUE,    -- the short name shown in citations
    sha256 TEXT NOT NULL,
    documents INTEGER NOT NULL,
    ingested_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL REFERENCES files(path) ON DELETE CASCADE,
    doc_id TEXT NOT NULL,
    chunk_id INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
"""


@dataclass(frozen=True)
class ChunkRow:
    doc_id: str
    source: str
    chunk_id: int
    text: str
    tokens: list[str]
    vector: np.ndarray | None


@dataclass(frozen=True)
class FileRow:
    path: str
    source: str
    sha256: str
    documents: int


class Store:
    """Thin typed access to the SQLite file; every write method commits its own transaction."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self.connection = connection
        self.path = path

    @classmethod
    def open(cls, directory: Path, readonly: bool) -> Store:
        db = directory / DB_NAME
        if readonly:
            connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(db)
            connection.executescript(_SCHEMA)
        connection.execute("PRAGMA foreign_keys = ON")
        store = cls(connection, db)
        version = store.get_meta("schema_version")
        if version is None and not readonly:
            store.set_meta("schema_version", SCHEMA_VERSION)
        elif version is not None and version != SCHEMA_VERSION:
            connection.close()
            raise ValueError(f"{db}: schema version {version}, this caregpt reads version {SCHEMA_VERSION}")
        return store

    def close(self) -> None:
        self.connection.close()

    def get_meta(self, key: str, default=None):
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value) -> None:
        with self.connection:
            self.connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def files(self) -> dict[str, FileRow]:
        rows = self.connection.execute("SELECT path, source, sha256, documents FROM files")
        return {r[0]: FileRow(*r) for r in rows}

    def replace_file(self, file: FileRow, chunks: Sequence[ChunkRow]) -> None:
        """Swap one file's chunks for new ones, atomically."""
        with self.connection:
            self.connection.execute("DELETE FROM chunks WHERE path = ?", (file.path,))
            self.connection.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                (file.path, file.source, file.sha256, file.documents, time.time()),
            )
            self.connection.executemany(
                "INSERT INTO chunks (path, doc_id, chunk_id, text, tokens, vector) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        file.path,
                        c.doc_id,
                        c.chunk_id,
                        c.text,
                        _TOKEN_SEP.join(c.tokens),
                        None if c.vector is None else np.asarray(c.vector, np.float32).tobytes(),
                    )
                    for c in chunks
                ],
            )

    def remove_file(self, path: str) -> None:
        with self.connection:
            self.connection.execute("DELETE FROM chunks WHERE path = ?", (path,))
            self.connection.execute("DELETE FROM files WHERE path = ?", (path,))

    def chunks(self) -> Iterator[ChunkRow]:
        rows = self.connection.execute(
            "SELECT c.doc_id, f.source, c.chunk_id, c.text, c.tokens, c.vector "
            "FROM chunks c JOIN files f ON f.path = c.path ORDER BY c.id"
        )
        for doc_id, source, chunk_id, text, tokens, vector in rows:
            yield ChunkRow(
                doc_id,
                source,
                chunk_id,
                text,
                tokens.split(_TOKEN_SEP) if tokens else [],
                None if vector is None else np.frombuffer(vector, dtype=np.float32),
            )

    def counts(self) -> dict[str, int]:
        files, documents = self.connection.execute("SELECT COUNT(*), COALESCE(SUM(documents), 0) FROM files").fetchone()
        chunks = self.connection.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return {"files": files, "documents": documents, "chunks": chunks}
