"""The resume log: one JSON line per finished seed in OUTPUT_DIR/raw.jsonl, appended as results arrive.

A run that is killed can leave half a line at the end; loading cuts it off (that seed is generated again).
Ids are unique in the file: append() refuses an id it already holds, so a re-run can never duplicate a record.
A lock file keeps two runs from writing the same output_dir at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from caregpt.config.loader import ConfigError

logger = logging.getLogger(__name__)
RAW_FILE = "raw.jsonl"
LOCK_FILE = ".distill.lock"


class ResumeStore:
    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        self.path = self.dir / RAW_FILE
        self.entries: dict[str, dict] = {}
        self.repaired_lines = 0
        self._handle = None
        self._lock = None

    def __enter__(self) -> ResumeStore:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / LOCK_FILE, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ConfigError(f"another distill run is writing {self.dir} (it holds {self.dir / LOCK_FILE}); wait for it or use another output_dir") from None
        self._load()
        self._handle = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            # a partial last line: the process died mid-write; that seed simply runs again
            self.repaired_lines += 1
            data = data[:cut]
        kept: list[bytes] = []
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                sid = entry["id"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
                logger.warning("%s:%d: unreadable line dropped; its seed will be generated again", self.path, number)
                self.repaired_lines += 1
                continue
            if sid in self.entries:
                self.repaired_lines += 1  # only possible if someone concatenated logs: keep the first
                continue
            self.entries[sid] = entry
            kept.append(line)
        if self.repaired_lines:
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_bytes(b"".join(line + b"\n" for line in kept))
            os.replace(tmp, self.path)

    def __contains__(self, sid: str) -> bool:
        return sid in self.entries

    def append(self, entry: dict) -> bool:
        """Write one finished seed; False (and nothing written) when its id is already there."""
        sid = entry["id"]
        if sid in self.entries:
            return False
        # one write call per line, flushed at once: a kill loses nothing that was reported back
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()
        self.entries[sid] = entry
        return True
