"""The dataset file in the project's formats, and its entry in dataset_info.json.

The registry is read, one entry added or replaced, and written back through a temporary file and an atomic
rename under a lock: other entries are kept byte-for-byte in meaning and order, and a registry that is not
valid JSON is reported and left alone rather than overwritten.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from caregpt.config.loader import ConfigError
from caregpt.data.registry import ALPACA_COLUMNS, registry_path, sha1_of


def write_jsonl(path: Path, records: list[dict]) -> None:
    """All or nothing: a reader never sees a half-written dataset file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def registry_entry(kind: str, data_file: Path, dataset_dir: Path) -> dict:
    """The dataset_info.json entry that makes the training pipeline read this file as the right kind."""
    entry: dict = {"file_name": os.path.relpath(data_file.resolve(), dataset_dir.resolve()), "file_sha1": sha1_of(data_file)}
    if kind == "kb_document":
        entry["columns"] = {"prompt": "content"}  # read as plain text documents
        return entry
    if kind == "preference":
        entry["ranking"] = True
    entry["columns"] = dict(ALPACA_COLUMNS)
    return entry


def register_dataset(dataset_dir: str | Path, name: str, entry: dict, dataset_info: str | Path | None = None) -> tuple[Path, str]:
    """Add or update one entry; returns (registry path, 'added' | 'updated' | 'unchanged')."""
    path = registry_path(dataset_dir, dataset_info)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs registering at once must not lose each other's entry
        registry: dict = {}
        if path.is_file() and path.stat().st_size > 0:
            try:
                registry = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); fix it, then re-run (it was left unchanged)") from None
            if not isinstance(registry, dict):
                raise ConfigError(f"{path}: expected an object mapping dataset names to entries; left unchanged")
        previous = registry.get(name)
        if previous == entry:
            return path, "unchanged"
        registry[name] = entry
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(registry, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return path, "added" if previous is None else "updated"
