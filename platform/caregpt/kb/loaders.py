"""Read documents out of files: txt, md, json, jsonl, pdf, docx.

Each loader returns the documents of one file (a json/jsonl file holds one document per record) and
raises `UnreadableFile` with a reason a person can act on. Nothing here logs document text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + (".json", ".jsonl", ".pdf", ".docx")
DEFAULT_FIELDS = ("content",)


class UnreadableFile(Exception):
    """The file exists but its documents cannot be read (bad encoding, corrupt, encrypted...)."""


@dataclass(frozen=True)
class Document:
    key: str  # "" for a whole-file document, "#<record>" for a record of a json/jsonl file
    text: str


@dataclass(frozen=True)
class LoadResult:
    documents: list[Document]
    problems: list[str]  # per-record problems ("line 7: invalid JSON"); the rest of the file still loads


def load_file(path: Path, fields: Sequence[str] = DEFAULT_FIELDS) -> LoadResult:
    """The documents of one file; the suffix picks the reader."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return LoadResult([Document("", _read_text(path))], [])
    if suffix == ".json":
        return _load_json(path, fields)
    if suffix == ".jsonl":
        return _load_jsonl(path, fields)
    if suffix == ".pdf":
        return LoadResult([Document("", _read_pdf(path))], [])
    if suffix == ".docx":
        return LoadResult([Document("", _read_docx(path))], [])
    raise UnreadableFile(f"unsupported file type {suffix or '(none)'} (supported: {', '.join(SUPPORTED_SUFFIXES)})")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    # Chinese text files outside UTF-8 are almost always GB18030 (a superset of GBK / GB2312).
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UnreadableFile("not valid UTF-8 or GB18030 text")


def _record_text(record, fields: Sequence[str]) -> str | None:
    """The text of one json record: a string itself, or its listed fields joined by a blank line."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return None
    parts = [str(record[f]).strip() for f in fields if record.get(f) not in (None, "")]
    return "\n\n".join(p for p in parts if p) if parts else None


def _records_to_documents(records, fields: Sequence[str], label: str) -> LoadResult:
    documents: list[Document] = []
    problems: list[str] = []
    for number, record in records:
        text = _record_text(record, fields)
        if text is None:
            problems.append(f"{label} {number}: no text in fields {list(fields)} (use --fields to name others)")
        elif text.strip():
            documents.append(Document(f"#{number}", text))
        else:
            problems.append(f"{label} {number}: empty")
    return LoadResult(documents, problems)


def _load_json(path: Path, fields: Sequence[str]) -> LoadResult:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise UnreadableFile(f"invalid JSON at line {err.lineno} column {err.colno}") from None
    if isinstance(value, dict) and _record_text(value, fields) is None:
        # {"data": [...]} and similar wrappers: take the one list inside
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UnreadableFile(f"expected a list of records or an object with fields {list(fields)}")
        value = lists[0]
    if isinstance(value, dict):
        return _records_to_documents([(0, value)], fields, "record")
    if not isinstance(value, list):
        raise UnreadableFile(f"expected a list of records or an object with fields {list(fields)}")
    return _records_to_documents(enumerate(value), fields, "record")


def _load_jsonl(path: Path, fields: Sequence[str]) -> LoadResult:
    records, problems = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError:
            problems.append(f"line {number}: invalid JSON")
    result = _records_to_documents(records, fields, "line")
    return LoadResult(result.documents, problems + result.problems)


def _read_pdf(path: Path) -> str:
    from caregpt._extras import require

    require("pypdf", extra="kb", purpose="reading .pdf documents")
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise UnreadableFile("encrypted PDF")
        return "\n".join((page.extract_text() or "") for page in reader.pages)
    except UnreadableFile:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as err:
        raise UnreadableFile(f"not a readable PDF ({type(err).__name__})") from None


def _read_docx(path: Path) -> str:
    import zipfile

    from caregpt._extras import require

    docx = require("docx", extra="kb", purpose="reading .docx documents", package="python-docx")
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as err:
        raise UnreadableFile(f"not a readable .docx ({type(err).__name__})") from None
    lines = [p.text for p in document.paragraphs]
    for table in document.tables:  # tables hold much of a clinical guideline's content
        for row in table.rows:
            lines.append(" | ".join(cell.text.strip() for cell in row.cells))
    return "\n".join(lines)
