"""The jobs store on PostgreSQL: the database one API server and any number of workers share.

Same tables, same queries and same job logic as the SQLite store (jobs_store.JobStore); only the
connection (psycopg 3, autocommit: every statement is its own transaction), the column types, the
insertion-order column (`seq`) and the claim's row lock (FOR UPDATE SKIP LOCKED) differ.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .jobs_store import ADDED_COLUMNS, JobStore, is_postgres

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, seq BIGSERIAL, filename TEXT, purpose TEXT, bytes BIGINT, created_at BIGINT, path TEXT,
    rows BIGINT, kind TEXT, format TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq BIGSERIAL, model TEXT, base_spec TEXT, training_file TEXT, validation_file TEXT,
    hyperparameters TEXT, extras TEXT, suffix TEXT, seed BIGINT, status TEXT, created_at BIGINT,
    started_at BIGINT, finished_at BIGINT, fine_tuned_model TEXT, run_dir TEXT, error TEXT,
    trained_tokens BIGINT, pid BIGINT, last_step BIGINT DEFAULT 0, cancel_requested INTEGER DEFAULT 0,
    metadata TEXT, method_type TEXT, worker TEXT, heartbeat_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at, seq);
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY, id TEXT, job_id TEXT, created_at BIGINT, level TEXT,
    message TEXT, type TEXT, data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
"""
PG_TYPES = {"TEXT": "TEXT", "REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
SCHEMA_LOCK_KEY = 0x7475_6E65  # pg_advisory_xact_lock: workers starting together create the tables once


class PostgresJobStore(JobStore):
    """A JobStore whose rows live in PostgreSQL."""

    shared = True
    ORDER = "seq"
    CLAIM_LOCK = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, storage: str | Path | None = None) -> None:
        import threading

        self.url, self.path = url, None
        self._storage = Path(storage) if storage else None
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self):
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise UserError("a postgresql:// database needs the psycopg package", "pip install 'psycopg[binary]'") from None
        try:
            db = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise UserError(f"cannot connect to the jobs database {_without_password(self.url)}: {str(exc).strip()}",
                            "check the --database URL, that PostgreSQL is running and that this machine may connect") from None
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            db.execute(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                for name, kind in columns.items():
                    db.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {PG_TYPES[kind]}")
        return db

    @property
    def root(self) -> Path:
        """--storage (a folder every worker sees at the same path), else ./runs."""
        return self._storage if self._storage is not None else Path("runs")

    def _execute(self, sql: str, args: tuple) -> list:
        with self._lock:
            if self._db.broken:  # the server restarted or the network dropped: the statement that saw it failed, this one reconnects
                self._db = self._connect()
            cursor = self._db.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _without_password(url: str) -> str:
    """The URL as it may be printed: a password in it is replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def open_store(url: str | None = None, storage: str | Path | None = None) -> JobStore:
    """The store a database URL names; `storage` is the folder for uploads and runs (shared by all workers).

    Here rather than in jobs_store.py, which this module builds on: no import circle between the two.
    """
    if is_postgres(url):
        return PostgresJobStore(url, storage)
    return JobStore(url, storage)
