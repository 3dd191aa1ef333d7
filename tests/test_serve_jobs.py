"""The OpenAI fine-tuning jobs API, end to end with the openai client: upload, train, serve, cancel, restart."""
from __future__ import annotations

import io
import json
import signal
import time

import httpx
import openai
import pytest

from test_serve import free_port, start_server, stop_server


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


class JobServer:
    """A server with the jobs API on, restartable on the same database."""

    def __init__(self, tmp, model_dir):
        self.tmp, self.model_dir = tmp, model_dir
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = start_server([str(self.model_dir), "--database", f"sqlite:///{self.tmp}/state/jobs.db"], self.port,
                                 self.tmp / "server.log", {"TUNEWRIGHT_JOBS": "1"})
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=60)

    def crash(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        stop_server(self.proc)


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory, tiny_model_dir):
    server = JobServer(tmp_path_factory.mktemp("jobs"), tiny_model_dir)
    server.client = server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def training_file(jobs_server):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(24)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return jobs_server.client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune")


def create_job(server, training_file, steps: int, suffix: str = "test"):
    return server.client.fine_tuning.jobs.create(
        model=str(server.model_dir), training_file=training_file.id, suffix=suffix, seed=3,
        hyperparameters={"n_epochs": 1, "batch_size": 4},
        extra_body={"tunewright": {"settings": {"train.max_steps": steps, "train.save_every": 1}}})


def test_upload_is_validated_and_listed(jobs_server, training_file):
    client = jobs_server.client
    assert training_file.purpose == "fine-tune" and training_file.bytes > 0
    assert training_file.id in [f.id for f in client.files.list()]
    assert client.files.retrieve(training_file.id).filename == "train.jsonl"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", io.BytesIO(b'{"messages": "nope"}\n')), purpose="fine-tune")
    assert "bad.jsonl:1" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="assistants")


def test_job_trains_and_its_model_is_served(jobs_server, training_file):
    client = jobs_server.client
    job = create_job(jobs_server, training_file, steps=2)
    assert job.status == "queued" and job.fine_tuned_model is None
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:tiny-chatml:tunewright:test:")
    assert done.hyperparameters.n_epochs == 1 and done.hyperparameters.batch_size == 4
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                            max_tokens=5, temperature=0)
    assert answer.choices[0].message.content is not None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith("Step 2/2: training loss=") for m in messages)
    assert messages[0] == "The job has successfully completed"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number in (1, 2) and checkpoints[0].metrics.train_loss is not None
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]


def test_bad_job_requests_are_400_or_404(jobs_server, training_file):
    client = jobs_server.client
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="gpt-4o", training_file=training_file.id)
    assert err.value.param == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=str(jobs_server.model_dir), training_file="file-missing")
    assert err.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model=str(jobs_server.model_dir), training_file=training_file.id,
                                       extra_body={"tunewright": {"settings": {"output_dir": "/etc"}}})
    assert "output_dir" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_cancel_stops_a_running_job(jobs_server, training_file):
    client = jobs_server.client
    job = create_job(jobs_server, training_file, steps=10_000, suffix="cancel")
    wait_for(client, job.id, ("running",))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and client.fine_tuning.jobs.retrieve(job.id).finished_at is None:
        time.sleep(0.5)
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_jobs_survive_a_restart(jobs_server, training_file):
    """Finished jobs keep their state and served model; a job running when the server died is re-queued."""
    client = jobs_server.client
    finished = [j for j in client.fine_tuning.jobs.list() if j.status == "succeeded"]
    running = create_job(jobs_server, training_file, steps=10_000, suffix="crash")
    wait_for(client, running.id, ("running",))
    jobs_server.crash()
    client = jobs_server.client = jobs_server.start()
    after = {j.id: j for j in client.fine_tuning.jobs.list(limit=100)}
    assert all(after[j.id].status == "succeeded" for j in finished)
    assert finished[0].fine_tuned_model in [m.id for m in client.models.list()]
    wait_for(client, running.id, ("running",))
    events = [e.message for e in client.fine_tuning.jobs.list_events(running.id, limit=100)]
    assert any("re-queued" in m for m in events)
    client.fine_tuning.jobs.cancel(running.id)
    assert httpx.get(f"http://127.0.0.1:{jobs_server.port}/health").json()["status"] == "ok"
