"""Where uploaded files, fine-tuning jobs and their events live, behind a database URL.

`sqlite:///runs/tunewright.db` (the embedded default: one server with its own in-process worker)
or `postgresql://user@host/db` (one server and any number of `tunewright worker`s sharing it; see
jobs_store_pg.py). One store interface, one copy of the job logic: the PostgreSQL store only swaps
the connection, the schema types and the row lock of the claim. SQLite: one connection, guarded by
a lock, in WAL mode: the API threads and the job runner thread write small rows, rarely at once.

Workers claim a queued job atomically (`claim_next`), beat a heartbeat while it runs, and re-queue
jobs whose worker stopped beating (`requeue_stale`): the job resumes from its newest checkpoint.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ..errors import UserError

DEFAULT_DATABASE_URL = "sqlite:///runs/tunewright.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT, purpose TEXT, bytes INTEGER, created_at INTEGER, path TEXT,
    rows INTEGER, kind TEXT, format TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model TEXT, base_spec TEXT, training_file TEXT, validation_file TEXT,
    hyperparameters TEXT, extras TEXT, suffix TEXT, seed INTEGER, status TEXT, created_at INTEGER,
    started_at INTEGER, finished_at INTEGER, fine_tuned_model TEXT, run_dir TEXT, error TEXT,
    trained_tokens INTEGER, pid INTEGER, last_step INTEGER DEFAULT 0, cancel_requested INTEGER DEFAULT 0,
    metadata TEXT, method_type TEXT, worker TEXT, heartbeat_at REAL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, job_id TEXT, created_at INTEGER, level TEXT,
    message TEXT, type TEXT, data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""
# Columns added after the first release: a database written by an older version gets them on open.
# files.kind ("sft" | "preference") and format: what the upload holds; jobs.method_type: "supervised" | "dpo".
# jobs.worker / heartbeat_at: which worker runs the job and when it last said it was alive.
ADDED_COLUMNS = {"jobs": {"metadata": "TEXT", "method_type": "TEXT", "worker": "TEXT", "heartbeat_at": "REAL"},
                 "files": {"kind": "TEXT", "format": "TEXT"}}
JSON_COLUMNS = ("hyperparameters", "extras", "error", "data", "metadata")
ACTIVE = ("validating_files", "queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")


def sqlite_path(url: str | None) -> Path | str:
    """The file a `sqlite:///` URL names (relative to the working directory), or ':memory:'."""
    url = url or DEFAULT_DATABASE_URL
    if url in ("sqlite://", "sqlite:///:memory:"):
        return ":memory:"
    if not url.startswith("sqlite:///"):
        scheme = url.split(":", 1)[0]
        raise UserError(f"database URL scheme '{scheme}' is not supported; use SQLite or PostgreSQL",
                        "use --database sqlite:///path/to/jobs.db (or leave it out for ./runs/tunewright.db), "
                        "or --database postgresql://user@host:5432/dbname")
    return Path(url[len("sqlite:///"):])


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0] in ("postgresql", "postgres")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class JobStore:
    """Rows in, dicts out; JSON columns decoded on the way out. This class is the SQLite store."""

    shared = False  # whether other processes (workers) use the same database
    ORDER = "rowid"  # the column that keeps insertion order among rows created in the same second
    CLAIM_LOCK = ""  # PostgreSQL: lock the picked row, skipping rows other workers are claiming

    def __init__(self, url: str | None = None, storage: str | Path | None = None) -> None:
        path = sqlite_path(url)
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._storage = Path(storage) if storage else None
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self):
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        with self._lock:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._db = db
            self._add_missing_columns()
        return db

    def _add_missing_columns(self) -> None:
        """Migrate a database from an older version in place; existing rows keep every value (new columns are NULL)."""
        for table, columns in ADDED_COLUMNS.items():
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    @property
    def root(self) -> Path:
        """The folder uploaded files and job runs go in: --storage, else beside the database file."""
        if self._storage is not None:
            return self._storage
        return self.path.parent if isinstance(self.path, Path) else Path("runs")

    def _execute(self, sql: str, args: tuple) -> list:
        """Run one statement (`?` placeholders) and return its rows; the one place that touches the connection."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _rows(self, sql: str, args: tuple = ()) -> list[dict]:
        return [_decode(dict(r)) for r in self._execute(sql, args)]

    def _write(self, sql: str, args: tuple = ()) -> None:
        self._execute(sql, args)

    def _insert(self, table: str, row: dict) -> None:
        row = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}
        cols = ", ".join(row)
        self._write(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    # --- files --------------------------------------------------------------------------------

    def add_file(self, row: dict) -> dict:
        self._insert("files", row)
        return self.file(row["id"])

    def file(self, file_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM files WHERE id = ?", (file_id,))
        return rows[0] if rows else None

    def files(self, purpose: str | None = None) -> list[dict]:
        if purpose:
            return self._rows(f"SELECT * FROM files WHERE purpose = ? ORDER BY created_at DESC, {self.ORDER} DESC", (purpose,))
        return self._rows(f"SELECT * FROM files ORDER BY created_at DESC, {self.ORDER} DESC")

    def delete_file(self, file_id: str) -> None:
        self._write("DELETE FROM files WHERE id = ?", (file_id,))

    # --- jobs ---------------------------------------------------------------------------------

    def add_job(self, row: dict) -> dict:
        self._insert("jobs", row)
        return self.job(row["id"])

    def job(self, job_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs(self, statuses: tuple[str, ...] | None = None) -> list[dict]:
        """Newest first."""
        if statuses:
            marks = ", ".join("?" * len(statuses))
            return self._rows(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created_at DESC, {self.ORDER} DESC", statuses)
        return self._rows(f"SELECT * FROM jobs ORDER BY created_at DESC, {self.ORDER} DESC")

    def claim_next(self, worker: str) -> dict | None:
        """Mark the oldest queued job running on `worker` and return it; None when nothing is queued.

        One statement, so two workers never claim the same job: SQLite has one writer at a time, and
        PostgreSQL locks the picked row with FOR UPDATE SKIP LOCKED (a second worker takes the next one).
        """
        rows = self._rows(f"UPDATE jobs SET status = 'running', worker = ?, heartbeat_at = ? WHERE status = 'queued' AND id = "
                          f"(SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, {self.ORDER} LIMIT 1{self.CLAIM_LOCK}) "
                          "RETURNING *", (worker, time.time()))
        return rows[0] if rows else None

    def heartbeat(self, job_id: str, worker: str) -> bool:
        """Say `worker` still runs the job; False when it no longer owns it (re-queued, cancelled or finished)."""
        return bool(self._execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker = ? AND status = 'running' "
                                  "RETURNING id", (time.time(), job_id, worker)))

    def requeue_stale(self, timeout_s: float) -> list[dict]:
        """Queue again the running jobs whose worker has not beaten for `timeout_s` (it died); each is returned once."""
        return self._rows("UPDATE jobs SET status = 'queued', worker = NULL, pid = NULL WHERE status = 'running' "
                          "AND heartbeat_at < ? RETURNING *", (time.time() - timeout_s,))

    def update_job(self, job_id: str, **fields) -> None:
        fields = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in fields.items()}
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id))

    # --- events -------------------------------------------------------------------------------

    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message", data: dict | None = None) -> None:
        self._insert("events", {"id": new_id("ftevent"), "job_id": job_id, "created_at": now(), "level": level,
                                "message": message, "type": type, "data": data})

    def events(self, job_id: str) -> list[dict]:
        """Newest first, as the OpenAI API lists them."""
        return self._rows("SELECT * FROM events WHERE job_id = ? ORDER BY seq DESC", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _decode(row: dict) -> dict:
    for key in JSON_COLUMNS:
        if key in row and isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row


def page(items: list[dict], after: str | None, limit: int) -> tuple[list[dict], bool]:
    """OpenAI cursor pagination: the items after the one with id `after`, at most `limit` of them."""
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    return items[:limit], len(items) > limit
