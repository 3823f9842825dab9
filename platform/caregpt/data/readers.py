"""Reading data files record by record, each record with its location (file:line).

Large line-oriented files (jsonl, txt) are cut into byte ranges that end on line boundaries, so Ray
Data reads them in parallel and no process ever holds a whole corpus; the planning pass only counts
newlines. json arrays, csv and parquet files are read one file per task.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LINE_FORMATS = (".jsonl", ".txt")
MAX_TASK_BYTES = 4 << 20  # a read range is one block through the tokenizer stage: small enough to stream
MIN_TASK_BYTES = 256 << 10
MIN_TASKS_PER_FILE = 8  # enough ranges that every tokenizer worker gets work even for one mid-sized file


@dataclass(frozen=True)
class ReadTask:
    path: str
    start: int  # byte offset of the first line of this range
    end: int  # byte offset just past the last line (-1: whole file)
    first_line: int  # 1-based number of the first line in the range

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RawRecord:
    loc: str  # "file:line" (or "file:record N" for json arrays / parquet)
    value: Any  # the parsed record, or None when it could not be parsed
    error: str = ""


def plan_read_tasks(path: str | Path, task_bytes: int | None = None) -> list[ReadTask]:
    """Byte ranges for one file. Line formats split at newlines; others are one task."""
    path = Path(path)
    if path.suffix not in LINE_FORMATS:
        return [ReadTask(str(path), 0, -1, 1)]
    size = path.stat().st_size
    if task_bytes is None:
        task_bytes = min(MAX_TASK_BYTES, max(MIN_TASK_BYTES, size // MIN_TASKS_PER_FILE + 1))
    tasks: list[ReadTask] = []
    start, line = 0, 1
    with open(path, "rb") as handle:
        while start < size:
            target = start + task_bytes
            if target >= size:
                tasks.append(ReadTask(str(path), start, size, line))
                break
            handle.seek(start)
            block = handle.read(target - start)
            handle.seek(target)
            tail = handle.readline()  # finish the line that straddles the boundary
            end = target + len(tail)
            tasks.append(ReadTask(str(path), start, end, line))
            line += block.count(b"\n") + tail.count(b"\n")
            start = end
    return tasks or [ReadTask(str(path), 0, 0, 1)]


def _line_records(task: ReadTask, as_json: bool) -> Iterator[RawRecord]:
    with open(task.path, "rb") as handle:
        handle.seek(task.start)
        data = handle.read(task.end - task.start) if task.end >= 0 else handle.read()
    for offset, raw in enumerate(data.split(b"\n")):
        line_no = task.first_line + offset
        loc = f"{task.path}:{line_no}"
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            yield RawRecord(loc, None, f"not UTF-8 text ({exc.reason} at byte {exc.start}); re-save the file as UTF-8")
            continue
        if not text.strip():
            continue  # blank lines are layout, not records
        if not as_json:
            yield RawRecord(loc, {"text": text})
            continue
        try:
            yield RawRecord(loc, json.loads(text))
        except json.JSONDecodeError as exc:
            yield RawRecord(loc, None, f"invalid JSON at column {exc.colno}: {exc.msg}")


def _json_array_records(path: str) -> Iterator[RawRecord]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # one broken array poisons the whole file: report where, as one invalid record
        yield RawRecord(f"{path}:{exc.lineno}", None, f"invalid JSON at column {exc.colno}: {exc.msg}")
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        yield RawRecord(f"{path}:1", None, f"expected a JSON array of records, got {type(data).__name__}")
        return
    for index, item in enumerate(data):
        yield RawRecord(f"{path}:record {index + 1}", item)


def _csv_records(path: str) -> Iterator[RawRecord]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        line_no = reader.line_num + 1
        for row in reader:
            yield RawRecord(f"{path}:{line_no}", dict(row))
            line_no = reader.line_num + 1


def _parquet_records(path: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield RawRecord(f"{path}:record {index}", row)


def read_task_records(task: ReadTask) -> Iterator[RawRecord]:
    suffix = Path(task.path).suffix
    if suffix == ".jsonl":
        yield from _line_records(task, as_json=True)
    elif suffix == ".txt":
        yield from _line_records(task, as_json=False)
    elif suffix == ".json":
        # some projects write jsonl under a .json name: fall back to line reading when the first char is not '['
        with open(task.path, encoding="utf-8") as handle:
            head = handle.read(4096).lstrip()
        if head.startswith("{") and "\n{" in head:
            yield from _line_records(ReadTask(task.path, 0, -1, 1), as_json=True)
        else:
            yield from _json_array_records(task.path)
    elif suffix == ".csv":
        yield from _csv_records(task.path)
    elif suffix == ".parquet":
        yield from _parquet_records(task.path)
    else:
        raise ValueError(f"unsupported file type {suffix!r}: {task.path}")


def iter_file_records(path: str | Path) -> Iterator[RawRecord]:
    """All records of a file, in order (driver-side helper for small files and tests)."""
    for task in plan_read_tasks(path):
        yield from read_task_records(task)

