"""The jobs database: a database written before `metadata` existed opens, keeps its jobs, and gains the column."""
from __future__ import annotations

import sqlite3

from tunewright.serve.jobs_store import JobStore

OLD_JOBS_TABLE = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, model TEXT, base_spec TEXT, training_file TEXT, validation_file TEXT,
    hyperparameters TEXT, extras TEXT, suffix TEXT, seed INTEGER, status TEXT, created_at INTEGER,
    started_at INTEGER, finished_at INTEGER, fine_tuned_model TEXT, run_dir TEXT, error TEXT,
    trained_tokens INTEGER, pid INTEGER, last_step INTEGER DEFAULT 0, cancel_requested INTEGER DEFAULT 0
);
"""


def test_old_database_is_migrated_without_losing_jobs(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_JOBS_TABLE)
        db.execute("INSERT INTO jobs (id, model, hyperparameters, seed, status, created_at, fine_tuned_model) "
                   "VALUES ('ftjob-old', 'm', '{\"n_epochs\": 2}', 7, 'succeeded', 1, 'ft:m:tunewright::old')")
    store = JobStore(f"sqlite:///{path}")
    old = store.job("ftjob-old")
    assert (old["status"], old["seed"], old["hyperparameters"], old["fine_tuned_model"]) == ("succeeded", 7, {"n_epochs": 2}, "ft:m:tunewright::old")
    assert old["metadata"] is None
    store.add_job({"id": "ftjob-new", "model": "m", "status": "queued", "created_at": 2, "metadata": {"team": "a"}})
    store.close()
    reopened = JobStore(f"sqlite:///{path}")  # opening a migrated database again changes nothing
    assert reopened.job("ftjob-new")["metadata"] == {"team": "a"}
    assert [j["id"] for j in reopened.jobs()] == ["ftjob-new", "ftjob-old"]
    reopened.close()
