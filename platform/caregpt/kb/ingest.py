"""Ingest files into an on-disk knowledge base, incrementally.

A file is identified by its absolute path and versioned by the SHA-256 of its bytes: re-ingesting skips
unchanged files, replaces the chunks of changed ones in one transaction, and (with prune=True) removes
files that no longer exist. Every file that contributes nothing is reported with the reason
(not found, unsupported type, unreadable, empty) and the ingest carries on with the rest.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from caregpt.kb.base import DEFAULT_CHUNK_SIZE, DEFAULT_OVERLAP, KnowledgeBaseError
from caregpt.kb.embed import encoder_from_spec
from caregpt.kb.loaders import DEFAULT_FIELDS, SUPPORTED_SUFFIXES, UnreadableFile, load_file
from caregpt.kb.store import ChunkRow, FileRow, Store
from caregpt.kb.text import chunk_text, tokenize

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one ingest did, file by file. Paths only: document text never appears here or in logs."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): contributed nothing
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, problem) in files that did load
    chunks_written: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"added {len(self.added)}, updated {len(self.updated)}, unchanged {len(self.unchanged)}, "
            f"removed {len(self.removed)}, skipped {len(self.skipped)} files; {self.chunks_written} chunks written"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        lines += [f"  warning {path}: {problem}" for path, problem in self.warnings]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Candidate:
    path: Path  # absolute
    source: str  # name shown in citations


def _settings(store: Store, chunk_size: int | None, overlap: int | None, fields: Sequence[str] | None) -> dict:
    """The knowledge base's chunking settings: fixed when it is created, so all chunks are alike."""
    wanted = {
        "chunk_size": chunk_size or DEFAULT_CHUNK_SIZE,
        "overlap": DEFAULT_OVERLAP if overlap is None else overlap,
        "fields": list(fields or DEFAULT_FIELDS),
    }
    chunk_text("probe", wanted["chunk_size"], wanted["overlap"])  # validates the pair, with a clear message
    stored = store.get_meta("settings")
    if stored is None:
        store.set_meta("settings", wanted)
        return wanted
    given = {"chunk_size": chunk_size, "overlap": overlap, "fields": list(fields) if fields else None}
    clashes = [f"{k}={stored[k]!r} (asked {v!r})" for k, v in given.items() if v is not None and v != stored[k]]
    if clashes:
        raise KnowledgeBaseError(
            f"{store.path} was built with {', '.join(clashes)}; use those settings or a new --kb directory"
        )
    return stored


def _encoder(store: Store, encoder):
    """The encoder for new vectors: the one the knowledge base was built with, or the first one given."""
    stored = store.get_meta("encoder")
    if encoder is None:
        return encoder_from_spec(stored)
    if stored is None:
        if store.counts()["chunks"]:
            raise KnowledgeBaseError(
                f"{store.path} holds chunks without vectors; build a new --kb directory to add an encoder"
            )
        store.set_meta("encoder", encoder.spec())
    elif stored != encoder.spec():
        raise KnowledgeBaseError(f"{store.path} was built with encoder {stored}; give the same one or a new --kb")
    return encoder


def _candidates(inputs: Sequence[str | Path], report: IngestReport) -> list[_Candidate]:
    found: list[_Candidate] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            root = path.resolve()
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = file.relative_to(root)
                if any(part.startswith(".") for part in relative.parts):
                    continue  # hidden files and folders (.git, editor swap files)
                found.append(_Candidate(file, f"{root.name}/{relative.as_posix()}"))
        elif path.is_file():
            found.append(_Candidate(path.resolve(), path.name))
        else:
            report.skipped.append((str(raw), "not found"))
    supported = []
    for candidate in found:
        if candidate.path.suffix.lower() in SUPPORTED_SUFFIXES:
            supported.append(candidate)
        else:
            suffix = candidate.path.suffix or "(no extension)"
            report.skipped.append((str(candidate.path), f"unsupported type {suffix} (supported: {', '.join(SUPPORTED_SUFFIXES)})"))
    return supported


def _chunks(candidate: _Candidate, documents, settings: dict, encoder) -> list[ChunkRow]:
    rows = []
    for document in documents:
        doc_id = candidate.source + document.key
        for number, piece in enumerate(chunk_text(document.text, settings["chunk_size"], settings["overlap"])):
            rows.append((doc_id, number, piece))
    vectors = encoder.encode([r[2] for r in rows]) if encoder is not None and rows else None
    return [
        ChunkRow(doc_id, candidate.source, number, piece, tokenize(piece), None if vectors is None else vectors[i])
        for i, (doc_id, number, piece) in enumerate(rows)
    ]


def ingest(
    kb_dir: str | Path,
    inputs: Sequence[str | Path],
    chunk_size: int | None = None,
    overlap: int | None = None,
    fields: Sequence[str] | None = None,
    encoder=None,
    prune: bool = False,
) -> IngestReport:
    """Add, update (and with `prune`, remove) files and folders in the knowledge base at `kb_dir`."""
    report = IngestReport()
    try:
        store = Store.open(Path(kb_dir), readonly=False)
    except ValueError as err:
        raise KnowledgeBaseError(str(err)) from None
    try:
        settings = _settings(store, chunk_size, overlap, fields)
        encoder = _encoder(store, encoder)
        known = store.files()
        sources_taken = {row.source: row.path for row in known.values()}
        for candidate in _candidates(inputs, report):
            _ingest_one(store, candidate, known, sources_taken, settings, encoder, report)
        if prune:
            for path in sorted(known):
                if not Path(path).exists():
                    store.remove_file(path)
                    report.removed.append(path)
    finally:
        store.close()
    logger.info("kb ingest %s: %s", kb_dir, report.summary().splitlines()[0])
    return report


def _ingest_one(store, candidate, known, sources_taken, settings, encoder, report) -> None:
    path = str(candidate.path)
    try:
        digest = hashlib.sha256(candidate.path.read_bytes()).hexdigest()
    except OSError as err:
        report.skipped.append((path, f"unreadable: {err.strerror or err}"))
        return
    previous = known.get(path)
    if previous and previous.sha256 == digest:
        report.unchanged.append(path)
        return
    source = previous.source if previous else candidate.source
    if sources_taken.get(source, path) != path:
        source = path  # two files with the same short name: the later one is cited by its full path
    try:
        loaded = load_file(candidate.path, settings["fields"])
    except UnreadableFile as err:
        kept = " (previous version kept)" if previous else ""
        report.skipped.append((path, f"unreadable: {err}{kept}"))
        return
    report.warnings += [(path, problem) for problem in loaded.problems]
    chunks = _chunks(candidate, [d for d in loaded.documents if d.text.strip()], settings, encoder)
    if not chunks:
        if previous:
            store.remove_file(path)
        report.skipped.append((path, "empty: no text to index" + (" (previous version removed)" if previous else "")))
        return
    documents = len({c.doc_id for c in chunks})
    store.replace_file(FileRow(path, source, digest, documents), chunks)
    sources_taken[source] = path
    (report.updated if previous else report.added).append(path)
    report.chunks_written += len(chunks)
