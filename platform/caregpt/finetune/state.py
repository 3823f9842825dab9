"""Durable state of the fine-tuning service: files, jobs, events, checkpoints and feedback in one SQLite file.

The state outlives the app: a restarted router replica opens the same file and its job monitor picks up every
job that is still queued or running. Owners are stored as a hash of the API key (never the key), and every
query for a client's objects filters on it, so another key's ids answer "not found".
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ANONYMOUS = "anonymous"  # the owner when the server has no API keys: every client is the same tenant
ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL, purpose TEXT NOT NULL, kind TEXT NOT NULL, examples INTEGER NOT NULL,
    masked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS files_owner ON files(owner, created_at);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, model TEXT NOT NULL,
    training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT, seed INTEGER NOT NULL,
    method TEXT NOT NULL, status TEXT NOT NULL, finished_at INTEGER, fine_tuned_model TEXT,
    error TEXT, ray_job_id TEXT, trained_tokens INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, job_id TEXT NOT NULL, key TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT,
    UNIQUE(job_id, key));
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, step INTEGER NOT NULL, created_at INTEGER NOT NULL,
    metrics TEXT NOT NULL, model TEXT NOT NULL, UNIQUE(job_id, step));
CREATE TABLE IF NOT EXISTS lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, response_id TEXT NOT NULL, model TEXT, rating INTEGER NOT NULL,
    better_answer TEXT, messages TEXT NOT NULL, answer TEXT NOT NULL, created_at INTEGER NOT NULL,
    UNIQUE(owner, response_id));
"""


def owner_of(api_key: str | None) -> str:
    """The tenant of a request: a hash of its key (the key itself is never stored)."""
    if not api_key:
        return ANONYMOUS
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class State:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "finetune.sqlite3"
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the monitor's writes
            db.executescript(SCHEMA)
        finally:
            db.close()

    @contextmanager
    def _db(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ---- files ---------------------------------------------------------------------------------
    def add_file(self, row: dict[str, Any]) -> dict[str, Any]:
        with self._db() as db:
            db.execute("INSERT INTO files (id, owner, filename, bytes, created_at, purpose, kind, examples, masked) "
                       "VALUES (:id, :owner, :filename, :bytes, :created_at, :purpose, :kind, :examples, :masked)", row)
        return row

    def file(self, owner: str, file_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner)).fetchone()
        return dict(row) if row else None

    def files(self, owner: str, limit: int, after: str | None = None, purpose: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM files WHERE owner = ?", [owner]
        if purpose:
            query, args = query + " AND purpose = ?", args + [purpose]
        if after:
            query += " AND rowid < (SELECT rowid FROM files WHERE id = ? AND owner = ?)"
            args += [after, owner]
        with self._db() as db:
            return [dict(r) for r in db.execute(query + " ORDER BY rowid DESC LIMIT ?", (*args, limit))]

    def count_files(self, owner: str) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM files WHERE owner = ?", (owner,)).fetchone()[0]

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._db() as db:
            return db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount > 0

    # ---- jobs ----------------------------------------------------------------------------------
    def add_job(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**row, "method": json.dumps(row["method"])}
        with self._db() as db:
            db.execute("INSERT INTO jobs (id, owner, created_at, model, training_file, validation_file, suffix, seed, method, status) "
                       "VALUES (:id, :owner, :created_at, :model, :training_file, :validation_file, :suffix, :seed, :method, :status)", row)
        return self.job(row["owner"], row["id"])  # type: ignore[return-value]

    @staticmethod
    def _job(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        job["method"] = json.loads(job["method"])
        job["error"] = json.loads(job["error"]) if job["error"] else None
        return job

    def job(self, owner: str | None, job_id: str) -> dict[str, Any] | None:
        """A job by id; owner None is the monitor's view (every job)."""
        with self._db() as db:
            if owner is None:
                return self._job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
            return self._job(db.execute("SELECT * FROM jobs WHERE id = ? AND owner = ?", (job_id, owner)).fetchone())

    def jobs(self, owner: str, limit: int, after: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM jobs WHERE owner = ?", [owner]
        if after:
            query += " AND rowid < (SELECT rowid FROM jobs WHERE id = ? AND owner = ?)"
            args += [after, owner]
        with self._db() as db:
            return [self._job(r) for r in db.execute(query + " ORDER BY rowid DESC LIMIT ?", (*args, limit))]  # type: ignore[misc]

    def jobs_in(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        with self._db() as db:
            return [self._job(r) for r in db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY rowid", statuses)]  # type: ignore[misc]

    def count_active(self, owner: str) -> int:
        with self._db() as db:
            return db.execute(f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN {ACTIVE}", (owner,)).fetchone()[0]

    def update_job(self, job_id: str, expect: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set fields; with `expect`, only while the status is one of those (a cancel never gets overwritten)."""
        if "error" in fields and fields["error"] is not None:
            fields["error"] = json.dumps(fields["error"])
        if fields.get("status") in TERMINAL:
            fields.setdefault("finished_at", now())
        sets = ", ".join(f"{k} = ?" for k in fields)
        query, args = f"UPDATE jobs SET {sets} WHERE id = ?", [*fields.values(), job_id]
        if expect:
            query += f" AND status IN ({','.join('?' * len(expect))})"
            args += list(expect)
        with self._db() as db:
            return db.execute(query, args).rowcount > 0

    # ---- events and checkpoints ------------------------------------------------------------------
    def add_event(self, job_id: str, key: str, message: str, *, level: str = "info", type: str = "message",  # noqa: A002
                  data: dict[str, Any] | None = None, created_at: int | None = None) -> bool:
        """One event per (job, key): reading the same log line again adds nothing."""
        with self._db() as db:
            cursor = db.execute("INSERT OR IGNORE INTO events (id, job_id, key, created_at, level, message, type, data) VALUES (?,?,?,?,?,?,?,?)",
                                (new_id("ftevent"), job_id, key, created_at or now(), level, message, type, json.dumps(data) if data else None))
            return cursor.rowcount > 0

    def events(self, job_id: str, limit: int, after: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM events WHERE job_id = ?", [job_id]
        if after:
            query += " AND seq < (SELECT seq FROM events WHERE id = ? AND job_id = ?)"
            args += [after, job_id]
        with self._db() as db:
            rows = [dict(r) for r in db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, limit))]
        for row in rows:
            row["data"] = json.loads(row["data"]) if row["data"] else None
        return rows

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, float], model: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO checkpoints (id, job_id, step, created_at, metrics, model) VALUES (?,?,?,?,?,?)",
                       (new_id("ftckpt"), job_id, step, now(), json.dumps(metrics), model))

    def checkpoints(self, job_id: str, limit: int, after: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM checkpoints WHERE job_id = ?", [job_id]
        if after:
            query += " AND step < (SELECT step FROM checkpoints WHERE id = ? AND job_id = ?)"
            args += [after, job_id]
        with self._db() as db:
            rows = [dict(r) for r in db.execute(query + " ORDER BY step DESC LIMIT ?", (*args, limit))]
        for row in rows:
            row["metrics"] = json.loads(row["metrics"])
        return rows

    def take_lease(self, holder: str, ttl_s: float, name: str = "monitor") -> bool:
        """True while `holder` runs the job monitor: with several router replicas, exactly one does at a time."""
        moment = time.time()
        with self._db() as db:
            db.execute("INSERT INTO lease (name, holder, expires) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "holder = excluded.holder, expires = excluded.expires WHERE lease.holder = excluded.holder OR lease.expires < ?",
                       (name, holder, moment + ttl_s, moment))
            return db.execute("SELECT holder FROM lease WHERE name = ?", (name,)).fetchone()[0] == holder

    # ---- feedback ------------------------------------------------------------------------------
    def add_feedback(self, row: dict[str, Any]) -> dict[str, Any]:
        """One rating per response and key; rating the same answer again replaces the earlier rating."""
        stored = {**row, "messages": json.dumps(row["messages"], ensure_ascii=False)}
        with self._db() as db:
            db.execute("INSERT INTO feedback (id, owner, response_id, model, rating, better_answer, messages, answer, created_at) "
                       "VALUES (:id, :owner, :response_id, :model, :rating, :better_answer, :messages, :answer, :created_at) "
                       "ON CONFLICT(owner, response_id) DO UPDATE SET rating = excluded.rating, better_answer = excluded.better_answer, "
                       "messages = excluded.messages, answer = excluded.answer, model = excluded.model, created_at = excluded.created_at", stored)
        return row

    def count_feedback(self, owner: str) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM feedback WHERE owner = ?", (owner,)).fetchone()[0]

    def feedback(self, owner: str | None = None) -> list[dict[str, Any]]:
        with self._db() as db:
            if owner is None:
                rows = db.execute("SELECT * FROM feedback ORDER BY rowid").fetchall()
            else:
                rows = db.execute("SELECT * FROM feedback WHERE owner = ? ORDER BY rowid", (owner,)).fetchall()
        out = [dict(r) for r in rows]
        for row in out:
            row["messages"] = json.loads(row["messages"])
        return out
