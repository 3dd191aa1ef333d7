"""`tunewright worker`: run fine-tuning jobs from a database shared with an API server.

Each worker is the server's own JobRunner without the server: it claims the oldest queued job
(atomically, so two workers never take the same one), trains it with all local devices (torchrun
when there is more than one), beats a heartbeat, and marks it succeeded with its
`fine_tuned_model` id; the API server loads that result and serves it. A worker that dies (kill -9,
lost machine) stops beating: another worker re-queues its job, which resumes from its newest
checkpoint. Uploads and run folders live under a storage root every worker sees at the same path.
"""
from __future__ import annotations

import signal
import sys
import threading

from ..errors import UserError
from .jobs_runner import HEARTBEAT_SECONDS, JobRunner, fine_tuned_id
from .jobs_store import is_postgres
from .jobs_store_pg import open_store


def local_devices() -> int:
    """How many processes a job gets on this machine: one per CUDA device, else one."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def _check_options(database: str, nproc: int | None, stale_after: float) -> None:
    if not is_postgres(database):
        raise UserError(f"a worker needs a database it can share with the server; '{database.split(':', 1)[0]}' is not one",
                        "use --database postgresql://user@host:5432/dbname (with SQLite, `tunewright serve` runs the jobs itself)")
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}", "leave it out to use every local GPU")
    if stale_after < 3 * HEARTBEAT_SECONDS:
        raise UserError(f"--stale-after {stale_after:g} is too short: workers beat every {HEARTBEAT_SECONDS:g}s",
                        f"use at least {3 * HEARTBEAT_SECONDS:g} seconds (default 60)")


def _record_result(job: dict) -> None:
    """A worker does not serve: it names the result, and the API server loads it under that id."""
    job["fine_tuned_model"] = fine_tuned_id(job)


def run_worker(database: str, storage: str | None = None, nproc: int | None = None, stale_after: float = 60.0) -> None:
    """Claim and run jobs until SIGTERM/SIGINT; a job running then goes back to the queue and resumes elsewhere."""
    _check_options(database, nproc, stale_after)
    store = open_store(database, storage)
    runner = JobRunner(store, _record_result, nproc=nproc or local_devices(), stale_after=stale_after)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner.start()
    print(f"worker {runner.name}: running jobs from the database with {runner.nproc} process(es) each; "
          f"runs under {store.root.resolve()}", file=sys.stderr, flush=True)
    stop.wait()
    print(f"worker {runner.name}: stopping (a running job is re-queued)", file=sys.stderr, flush=True)
    runner.stop()
    store.close()
