"""Stopping `tunewright serve` with a real signal while a fine-tuning job trains.

The server must stop the trainer (no orphan left with parent PID 1), re-queue the job, and exit; the
next start resumes the job from its newest checkpoint. The trainer never sees the server's API key.
"""
from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest
from servers import (
    JobServer,
    assert_resumed,
    create_job,
    process_gone,
    saved_state,
    wait_for,
    wait_for_checkpoint,
)

API_KEY = "sk-lifecycle-secret"


def upload(server: JobServer):
    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]} for i in range(16)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return server.client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")


def trainer_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_stops_the_trainer_and_requeues_the_job(sig, tmp_path, tiny_model_dir):
    server = JobServer(tmp_path, tiny_model_dir, api_key=API_KEY)
    server.client = server.start()
    try:
        job = create_job(server, upload(server), steps=10_000, suffix="signal")
        wait_for_checkpoint(server, job.id)
        trainer = server.job_row(job.id)["pid"]
        env = trainer_environ(trainer)
        assert env.get("TUNEWRIGHT_JOB_ID") == job.id  # it is the trainer's environment we read
        assert "TUNEWRIGHT_API_KEY" not in env and API_KEY not in env.values()

        server.proc.send_signal(sig)
        assert server.proc.wait(timeout=60) == 0
        assert process_gone(trainer, timeout=5), "the trainer outlived the server"
        row = server.job_row(job.id)
        assert row["status"] == "queued" and row["pid"] is None
        step, lines = saved_state(Path(row["run_dir"]))

        server.client = server.start()
        events = [e.message for e in server.client.fine_tuning.jobs.list_events(job.id, limit=100)]
        assert any(m.startswith("The server was stopped while this job was running; re-queued") for m in events)
        assert_resumed(server, job.id, step, lines)
        trainer = server.job_row(job.id)["pid"]
        server.client.fine_tuning.jobs.cancel(job.id)
        assert wait_for(server.client, job.id, ("cancelled",)).status == "cancelled"
        assert process_gone(trainer)
    finally:
        if server.proc.poll() is None:
            server.stop()
