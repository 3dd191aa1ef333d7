"""The OpenAI fine-tuning jobs API, end to end with the openai client: upload, train, serve, cancel, restart."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import openai
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
    metadata = {"team": "support", "ticket": "x" * 512}
    job = create_job(jobs_server, training_file, steps=2, metadata=metadata, validation_file=training_file.id)
    assert job.status == "queued" and job.fine_tuned_model is None and job.metadata == metadata
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
    last = next(e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics")
    assert last["valid_loss"] > 0 and 0.0 <= last["valid_mean_token_accuracy"] <= 1.0  # the final step evaluates
    assert messages[0] == "The job has successfully completed"
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [1]  # save_every 1; the last step is the result, not a checkpoint
    assert checkpoints[0].metrics.train_loss is not None
    listed = {j.id: j for j in client.fine_tuning.jobs.list(limit=100)}
    assert listed[job.id].metadata == metadata and done.metadata == metadata


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


MALFORMED = [  # (body fields, the param the 400 must name)
    ({"seed": 2**70}, "seed"), ({"seed": -1}, "seed"), ({"seed": "3"}, "seed"), ({"seed": True}, "seed"),
    ({"hyperparameters": {"n_epochs": "3"}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 4.5}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": "2"}}, "hyperparameters.learning_rate_multiplier"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}},
     "method.supervised.hyperparameters.n_epochs"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"), ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"), ({"metadata": {"k": 1}}, "metadata"), ({"metadata": ["k"]}, "metadata"),
    ({"tunewright": {"settings": {"train.max_steps": 100_001}}}, "tunewright.settings.train.max_steps"),
    ({"tunewright": {"settings": {"train.max_steps": "5"}}}, "tunewright.settings.train.max_steps"),
    ({"tunewright": {"settings": {"lora.r": 257}}}, "tunewright.settings.lora.r"),
    ({"tunewright": {"settings": {"lora.r": True}}}, "tunewright.settings.lora.r"),
]


def test_malformed_job_fields_are_400_naming_the_param(jobs_server, training_file):
    """Raw HTTP, since the openai client would type-check some of these before sending them."""
    url = f"http://127.0.0.1:{jobs_server.port}/v1/fine_tuning/jobs"
    before = len(jobs_server.client.fine_tuning.jobs.list(limit=100).data)
    for fields, param in MALFORMED:
        body = {"model": str(jobs_server.model_dir), "training_file": training_file.id} | fields
        response = httpx.post(url, json=body, timeout=30)
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", (fields, error)
    assert len(jobs_server.client.fine_tuning.jobs.list(limit=100).data) == before


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
    """Finished jobs keep their state and served model; a job running when the server was killed (-9) loses its
    trainer at once (parent-death signal), is re-queued, and resumes from its newest checkpoint."""
    client = jobs_server.client
    finished = wait_for(client, create_job(jobs_server, training_file, steps=1, suffix="done").id, ("succeeded", "failed"))
    assert finished.status == "succeeded", finished.error
    running = create_job(jobs_server, training_file, steps=10_000, suffix="crash")
    wait_for_checkpoint(jobs_server, running.id)
    trainer = jobs_server.job_row(running.id)["pid"]
    jobs_server.crash()
    assert process_gone(trainer), "the trainer outlived a kill -9 of the server"
    step, lines = saved_state(Path(jobs_server.job_row(running.id)["run_dir"]))
    client = jobs_server.client = jobs_server.start()
    after = {j.id: j for j in client.fine_tuning.jobs.list(limit=100)}
    assert after[finished.id].status == "succeeded"
    assert finished.fine_tuned_model in [m.id for m in client.models.list()]
    assert_resumed(jobs_server, running.id, step, lines)
    events = [e.message for e in client.fine_tuning.jobs.list_events(running.id, limit=100)]
    assert any("The server restarted while this job was running; re-queued" in m for m in events)
    client.fine_tuning.jobs.cancel(running.id)
    assert httpx.get(f"http://127.0.0.1:{jobs_server.port}/health").json()["status"] == "ok"
