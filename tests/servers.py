"""Servers for the serve tests: a real `tunewright serve` subprocess on a free port, the jobs API's helpers."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int, log: Path, extra_env: dict | None = None) -> subprocess.Popen:
    """`tunewright serve ARGS --port PORT` in a subprocess; returns once /health answers."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TUNEWRIGHT_JOBS": "0"} | (extra_env or {})
    env.pop("TUNEWRIGHT_API_KEY", None)
    handle = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "tunewright.cli", "serve", *args, "--port", str(port)],
                            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not come up:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def wait_for_event(client, job_id: str, message: str, timeout: float = 30) -> list[str]:
    """The job's event messages once `message` is among them, or as they stand at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100)]
        if message in events or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


class JobServer:
    """A server with the jobs API on, restartable on the same database.

    With `api_key`, the key is given through TUNEWRIGHT_API_KEY in the server's environment (so tests
    can check the trainer does not inherit it).
    """

    def __init__(self, tmp, model_dir, api_key: str | None = None):
        self.tmp, self.model_dir, self.api_key = tmp, model_dir, api_key
        self.port = free_port()
        self.proc = None
        self.db = Path(tmp) / "state" / "jobs.db"

    def start(self):
        args = [str(self.model_dir), "--database", f"sqlite:///{self.db}"]
        if self.api_key:
            self.proc = self._start_with_key_in_env(args)
        else:
            self.proc = start_server(args, self.port, self.tmp / "server.log", {"TUNEWRIGHT_JOBS": "1"})
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=self.api_key or "none", max_retries=0, timeout=60)

    def _start_with_key_in_env(self, args: list[str]) -> subprocess.Popen:
        env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TUNEWRIGHT_JOBS": "1", "TUNEWRIGHT_API_KEY": self.api_key}
        log = open(self.tmp / "server.log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "tunewright.cli", "serve", *args, "--port", str(self.port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.5)
        proc.kill()
        raise RuntimeError(f"server did not come up:\n{(self.tmp / 'server.log').read_text()[-3000:]}")

    def job_row(self, job_id: str) -> dict:
        """The job's row as stored in SQLite (pid, status), read directly from the database file."""
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def crash(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        stop_server(self.proc)


def process_gone(pid: int, timeout: float = 15) -> bool:
    """Whether `pid` has exited (zombies count as exited) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.2)
    return False


def wait_for_checkpoint(server: JobServer, job_id: str, timeout: float = 240) -> int:
    """The step of the job's first complete checkpoint, once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = server.client.fine_tuning.jobs.checkpoints.list(job_id).data
        if data:
            return data[0].step_number
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} wrote no checkpoint in {timeout}s")


def saved_state(run_dir: Path) -> tuple[int, list[str]]:
    """The newest complete checkpoint's step and the metrics lines up to it, as left on disk."""
    from tunewright.train.checkpoint import complete_checkpoints

    step = int(complete_checkpoints(run_dir)[-1].name.rsplit("-", 1)[-1])
    lines = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    return step, lines


def assert_resumed(server: JobServer, job_id: str, step: int, lines: list[str], timeout: float = 240) -> None:
    """The re-queued job was restarted with --resume and continued after `step`, keeping the logged steps before it."""
    wait_for(server.client, job_id, ("running",))
    # a job is 'running' from the moment a runner claims it; the trainer's pid and this event follow its start
    events = wait_for_event(server.client, job_id, "Fine-tuning job started (resuming)")
    assert "Fine-tuning job started (resuming)" in events, events
    pid = server.job_row(job_id)["pid"]
    assert "--resume" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    metrics = Path(server.job_row(job_id)["run_dir"]) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = metrics.read_text().splitlines()
        if any(json.loads(line)["step"] > step for line in now[len(lines):] if line.strip()):
            assert now[:len(lines)] == lines, "the steps logged before the checkpoint were rewritten: it started over"
            assert json.loads(now[len(lines)])["step"] == step + 1
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} logged no step after {step} in {timeout}s")


def create_job(server, training_file, steps: int, suffix: str = "test", **kwargs):
    return server.client.fine_tuning.jobs.create(
        model=str(server.model_dir), training_file=training_file.id, suffix=suffix, seed=3,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"tunewright": {"settings": {"train.max_steps": steps, "train.save_every": 1}}}, **kwargs)


def dpo_row(i: int) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
            "non_preferred_output": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i + 1}."}]}


def sft_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}


def upload(client, name: str, rows: list[dict]):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


DASHBOARD_KEY = "dashboard-key"


def sum_rows(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(start, start + n)]


def bad_file(path: Path) -> Path:
    """Five chats; line 3 has messages as a string: the one bad row."""
    lines = [json.dumps(r) for r in sum_rows(5)]
    lines[2] = json.dumps({"messages": "nope"})
    path.write_text("\n".join(lines) + "\n")
    return path


def train_cli_run(runs: Path, name: str, model_dir: Path, data: Path, val: Path, learning_rate: float) -> Path:
    import tunewright

    cfg = tunewright.load_config(overrides=[
        "train.max_steps=3", "train.threads=1", "train.precision=fp32", f"train.learning_rate={learning_rate}",
        "train.batch_size=4", "eval.max_new_tokens=4", "eval.limit=3", f"data.validation={val}"],
        model=str(model_dir), data__train=str(data), output_dir=str(runs / name))
    tunewright.train(cfg)
    return runs / name
