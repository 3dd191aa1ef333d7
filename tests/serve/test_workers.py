"""Several job workers on a real PostgreSQL: atomic claims, heartbeats, and a killed worker's job resumed elsewhere.

PostgreSQL comes from the Debian packages (`make postgres`) and is started here with initdb/pg_ctl
on a loopback port in a temporary data directory; without it these tests skip with the reason.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from pg_server import LocalPostgres, skip_reason
from servers import free_port, process_gone, start_server, stop_server, wait_for
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.serve.jobs_runner import trainer_command

STALE_AFTER = 8  # seconds without a heartbeat before a job is re-queued (workers beat every 2 s)
needs_postgres = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def postgres():
    server = LocalPostgres().start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres) -> str:
    """An empty database for one test."""
    return postgres.new_database()


def _queued(store, n: int) -> list[str]:
    ids = [f"ftjob-{i:03d}" for i in range(n)]
    for i, job_id in enumerate(ids):
        store.add_job({"id": job_id, "model": "m", "status": "queued", "created_at": 1000 + i // 4})
    return ids


@needs_postgres
def test_concurrent_claims_take_each_job_once_in_order(database):
    """Four connections claiming at once share 40 jobs: none twice, none left, each worker oldest first."""
    from tunewright.serve.jobs_store_pg import open_store

    stores = [open_store(database) for _ in range(4)]  # four connections also create the schema at once
    ids = _queued(stores[0], 40)
    claimed: dict[str, list[str]] = {f"w{i}": [] for i in range(4)}

    def claim_all(store, name: str) -> None:
        while (job := store.claim_next(name)) is not None:
            claimed[name].append(job["id"])

    threads = [threading.Thread(target=claim_all, args=(s, name)) for s, name in zip(stores, claimed)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    everything = [job_id for got in claimed.values() for job_id in got]
    assert sorted(everything) == ids and len(everything) == len(set(everything))
    assert all(got == sorted(got) for got in claimed.values())  # each worker took the oldest queued job each time
    assert stores[0].heartbeat(claimed["w1"][0], "w1") and not stores[0].heartbeat(claimed["w1"][0], "w2")
    time.sleep(0.3)
    requeued = [stores[i].requeue_stale(0.2) for i in (0, 1)]  # two workers notice the same dead jobs: each is re-queued once
    assert sorted(j["id"] for r in requeued for j in r) == ids
    assert stores[2].claim_next("w2")["id"] == ids[0]  # a re-queued job keeps its place at the front
    for store in stores:
        store.close()


@needs_postgres
def test_a_claim_skips_a_job_another_worker_is_claiming(database):
    """While one connection holds the oldest queued row (a claim in flight), another claim takes the next job at
    once: FOR UPDATE SKIP LOCKED. Without it the second worker waits on the row lock, then gets nothing."""
    import psycopg

    from tunewright.serve.jobs_store_pg import open_store

    store = open_store(database)
    store.add_job({"id": "ftjob-lock-a", "model": "m", "status": "queued", "created_at": 1})
    store.add_job({"id": "ftjob-lock-b", "model": "m", "status": "queued", "created_at": 2})
    got: list = []
    with psycopg.connect(database) as other, other.transaction():
        other.execute("SELECT id FROM jobs WHERE id = 'ftjob-lock-a' FOR UPDATE")
        claimer = threading.Thread(target=lambda: got.append(store.claim_next("w2")), daemon=True)
        claimer.start()
        claimer.join(timeout=5)
        assert not claimer.is_alive(), "the claim waited for another worker's row lock"
    assert got[0]["id"] == "ftjob-lock-b" and got[0]["worker"] == "w2"
    store.close()


def test_the_heartbeat_thread_keeps_a_job_while_the_runner_is_busy_and_notices_losing_it(tmp_path, monkeypatch):
    """Beats come from their own thread (a worker importing torch for a job start must not go stale), and a beat
    that finds the job re-queued to another worker marks it lost, so the runner stops its trainer."""
    from tunewright.serve import jobs_runner
    from tunewright.serve.jobs_runner import JobRunner
    from tunewright.serve.jobs_store import JobStore

    monkeypatch.setattr(jobs_runner, "HEARTBEAT_SECONDS", 0.2)
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    store.add_job({"id": "ftjob-beat", "model": "m", "status": "queued", "created_at": 1})
    runner = JobRunner(store, on_success=None, stale_after=1.0)
    runner.job_id = store.claim_next(runner.name)["id"]  # as _start does; the scheduling loop itself never runs here
    runner._heart.start()
    try:
        time.sleep(1.5)  # longer than stale_after: without beats the job would be re-queued now
        assert store.requeue_stale(1.0) == [] and store.job("ftjob-beat")["worker"] == runner.name
        store.update_job("ftjob-beat", status="queued", worker=None)  # given away, as requeue_stale does
        store.claim_next("other-worker")
        deadline = time.monotonic() + 5
        while runner._lost != "ftjob-beat" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner._lost == "ftjob-beat"
        assert store.job("ftjob-beat")["worker"] == "other-worker"  # a lost beat changes nothing in the row
    finally:
        runner._stop.set()
        runner._heart.join(timeout=5)
        store.close()


@needs_postgres
def test_a_store_reconnects_after_its_connection_is_cut(database):
    """A database restart or network cut fails the statement that meets it; the next one reconnects, so a worker's
    loop (which logs the failure and carries on) keeps working without a restart."""
    import psycopg

    from tunewright.serve.jobs_store_pg import open_store

    store = open_store(database)
    store.add_job({"id": "ftjob-cut", "model": "m", "status": "queued", "created_at": 1})
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND pid <> pg_backend_pid()")
    with pytest.raises(psycopg.OperationalError):
        store.job("ftjob-cut")
    assert store.claim_next("w1")["id"] == "ftjob-cut"
    store.close()


def test_worker_needs_a_shared_database_it_can_reach():
    runner = CliRunner()
    sqlite = runner.invoke(app, ["worker", "--database", "sqlite:///runs/jobs.db"])
    assert sqlite.exit_code == 2 and "postgresql://" in sqlite.output and "Traceback" not in sqlite.output
    down = runner.invoke(app, ["worker", "--database", f"postgresql://tw:secret@127.0.0.1:{free_port()}/jobs"])
    if skip_reason() is None or "psycopg is not installed" not in skip_reason():
        assert down.exit_code == 2 and "cannot connect to the jobs database" in down.output, down.output
        assert "secret" not in down.output and ":***@" in down.output
    short = runner.invoke(app, ["worker", "--database", "postgresql://x@127.0.0.1/db", "--stale-after", "1"])
    assert short.exit_code == 2 and "--stale-after" in short.output


def test_a_job_gets_every_local_device_through_torchrun():
    one = trainer_command(Path("job.yaml"), Path("run"), resume=False, nproc=1)
    four = trainer_command(Path("job.yaml"), Path("run"), resume=True, nproc=4)
    assert "torch.distributed.run" not in one
    start = four.index("torch.distributed.run")
    assert four[start + 1:start + 5] == ["--standalone", "--nproc-per-node=4", "-m", "tunewright.cli"]
    assert four[-1] == "--resume"


class Cluster:
    """One API server and two workers on one PostgreSQL database and one storage root."""

    def __init__(self, tmp: Path, model_dir: Path, url: str) -> None:
        self.tmp, self.model_dir, self.url, self.storage = tmp, model_dir, url, tmp / "storage"
        self.port = free_port()
        self.server = start_server([str(model_dir), "--database", url, "--storage", str(self.storage)], self.port,
                                   tmp / "server.log", {"TUNEWRIGHT_JOBS": "1"})
        self.workers = [self._worker(i) for i in range(2)]
        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=60)

    def _worker(self, i: int) -> subprocess.Popen:
        env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        with open(self.tmp / f"worker{i}.log", "w") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen([sys.executable, "-m", "tunewright.cli", "worker", "--database", self.url, "--storage",
                                     str(self.storage), "--nproc", "1", "--stale-after", str(STALE_AFTER)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)

    def job_row(self, job_id: str) -> dict:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.url, row_factory=dict_row) as db:
            return db.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()

    def events(self, job_id: str) -> list[str]:
        return [e.message for e in reversed(self.client.fine_tuning.jobs.list_events(job_id, limit=100).data)]

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        stop_server(self.server)


@pytest.fixture
def cluster(tmp_path, tiny_model_dir, database):
    cluster = Cluster(tmp_path, tiny_model_dir, database)
    yield cluster
    cluster.close()


def _submit(cluster: Cluster, file_id: str, steps: int, suffix: str):
    return cluster.client.fine_tuning.jobs.create(
        model=str(cluster.model_dir),
        training_file=file_id, suffix=suffix, seed=3, hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"tunewright": {"settings": {"train.max_steps": steps, "train.save_every": 1}}})


def _wait_for_checkpoint_on_a_worker(cluster: Cluster, job_id: str, timeout: float = 180) -> str:
    """The worker running the job, once the job has a complete checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.client.fine_tuning.jobs.checkpoints.list(job_id).data:
            return cluster.job_row(job_id)["worker"]
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} wrote no checkpoint in {timeout}s")


@needs_postgres
def test_two_workers_share_the_queue_and_a_killed_workers_job_resumes_on_the_other(cluster):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
    upload = cluster.client.files.create(file=("train.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())),
                                         purpose="fine-tune")
    long_steps = 24  # two short jobs first, so both workers are busy twice before the kill leaves one
    short = [_submit(cluster, upload.id, 2, f"short{i}") for i in range(2)]
    long = _submit(cluster, upload.id, long_steps, "long")
    short.append(_submit(cluster, upload.id, 2, "short2"))
    owner = _wait_for_checkpoint_on_a_worker(cluster, long.id)
    victim = next(p for p in cluster.workers if owner.endswith(f":{p.pid}"))
    trainer = cluster.job_row(long.id)["pid"]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert process_gone(trainer), "the trainer outlived a kill -9 of its worker"

    done = {job.id: wait_for(cluster.client, job.id, ("succeeded", "failed", "cancelled"), timeout=240) for job in [long, *short]}
    assert all(job.status == "succeeded" for job in done.values()), {j.id: j.error for j in done.values()}
    for job in short:  # claimed exactly once each
        assert sum(m.startswith("Fine-tuning job started on") for m in cluster.events(job.id)) == 1, cluster.events(job.id)
    started = [m for m in cluster.events(long.id) if m.startswith("Fine-tuning job started on")]
    survivor = next(p for p in cluster.workers if p is not victim)
    assert started[0] == f"Fine-tuning job started on {owner}" and len(started) == 2, started
    assert started[1].endswith(f":{survivor.pid} (resuming)"), started
    assert sum("stopped responding" in m for m in cluster.events(long.id)) == 1
    run_dir = Path(cluster.job_row(long.id)["run_dir"])
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps == list(range(1, long_steps + 1)), steps  # nothing lost, nothing repeated
    assert done[long.id].fine_tuned_model is not None
    deadline = time.monotonic() + 60  # the server loads what the workers finished
    while time.monotonic() < deadline and not {j.fine_tuned_model for j in done.values()} <= {m.id for m in cluster.client.models.list()}:
        time.sleep(0.5)
    answer = cluster.client.chat.completions.create(model=done[long.id].fine_tuned_model, max_tokens=4, temperature=0,
                                                    messages=[{"role": "user", "content": "What is 2 plus 2?"}])
    assert answer.choices[0].message.content is not None
