"""DPO through the OpenAI fine-tuning jobs API: `method: {"type": "dpo", ...}` with a DPO-format file.

One real job end to end with the official openai client (upload, create, poll, chat with the result);
the refusals (a file of the other kind, a bad beta) are raw HTTP, since the client type-checks some
of them before sending.
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from servers import JobServer, dpo_row, sft_row, upload, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    server = JobServer(tmp_path_factory.mktemp("jobs-dpo"), tiny_model_dir)
    server.client = server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def files(server):
    client = server.client
    return {"pairs": upload(client, "pairs.jsonl", [dpo_row(i) for i in range(6)]),
            "val_pairs": upload(client, "val_pairs.jsonl", [dpo_row(i) for i in range(10, 12)]),
            "sft": upload(client, "chat.jsonl", [sft_row(i) for i in range(6)])}


def test_dpo_job_trains_on_pairs_and_its_model_is_served(server, files):
    from tunewright.train.hparams import auto_learning_rate

    client = server.client
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 1, "batch_size": 2,
                                                         "learning_rate_multiplier": 2}}}
    job = client.fine_tuning.jobs.create(model=str(server.model_dir), training_file=files["pairs"].id,
                                         validation_file=files["val_pairs"].id, suffix="dpo", seed=3, method=method,
                                         extra_body={"tunewright": {"settings": {"train.max_steps": 2}}})
    assert job.status == "queued" and job.method.type == "dpo"
    assert job.method.dpo.hyperparameters.beta == 0.25
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.25
    assert done.method.dpo.hyperparameters.batch_size == 2 and done.hyperparameters.n_epochs == 1

    run_dir = Path(server.job_row(job.id)["run_dir"])
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["objective"] == "dpo" and config["preference"]["beta"] == 0.25
    assert config["train"]["learning_rate"] == pytest.approx(2 * auto_learning_rate("lora", 0, "dpo"))
    assert config["data"]["validation"].endswith(".jsonl")  # the validation file reached the trainer
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["kind"] == "preference" and report["train_examples"] == 6 and report["validation_examples"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "reward_margin" in rows[-1] and "eval_loss" in rows[-1]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    step_two = next(e for e in events if e.message.startswith("Step 2/2: training loss="))
    assert "validation loss=" in step_two.message and "preference_accuracy" in step_two.data
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "What is 2 plus 2?"}],
                                            max_tokens=5, temperature=0)
    assert answer.choices[0].message.content is not None


def post_job(server, body: dict | bytes) -> httpx.Response:
    url = f"http://127.0.0.1:{server.port}/v1/fine_tuning/jobs"
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    return httpx.post(url, json=body, timeout=30)


def assert_400(response: httpx.Response, param: str) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    return error


def test_a_file_of_the_other_kind_is_refused_at_validation(server, files):
    model = str(server.model_dir)
    before = len(server.client.fine_tuning.jobs.list(limit=100).data)
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto"}}}

    error = assert_400(post_job(server, {"model": model, "training_file": files["sft"].id, "method": dpo}), "training_file")
    assert "instruction data" in error["message"] and "'dpo' job trains on preference pairs" in error["message"]
    assert "preferred_output" in error["message"] and "method.type 'supervised'" in error["message"]
    for method in (None, {"type": "supervised"}):
        body = {"model": model, "training_file": files["pairs"].id} | ({"method": method} if method else {})
        error = assert_400(post_job(server, body), "training_file")
        assert "preference pairs" in error["message"] and "method.type 'dpo'" in error["message"]
    body = {"model": model, "training_file": files["pairs"].id, "validation_file": files["sft"].id, "method": dpo}
    assert "chat.jsonl" in assert_400(post_job(server, body), "validation_file")["message"]
    assert len(server.client.fine_tuning.jobs.list(limit=100).data) == before


BAD_DPO = [  # (method, the param the 400 must name)
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": -0.1}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 1000}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": "0.1"}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": True}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}, "method.dpo.hyperparameters.beta"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 0}}}, "method.dpo.hyperparameters.n_epochs"),
    ({"type": "dpo", "dpo": {"hyperparameters": {"learning_rate_multiplier": "2"}}},
     "method.dpo.hyperparameters.learning_rate_multiplier"),
    ({"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 1}}}, "method.supervised"),
    ({"type": "reinforcement"}, "method.type"),
]


def test_bad_beta_and_method_are_400_naming_the_param(server, files):
    before = len(server.client.fine_tuning.jobs.list(limit=100).data)
    for method, param in BAD_DPO:
        body = {"model": str(server.model_dir), "training_file": files["pairs"].id, "method": method}
        assert_400(post_job(server, body), param)
    # NaN is not JSON, but Python's parser takes it: it must not slip past `beta > 0`
    raw = json.dumps({"model": str(server.model_dir), "training_file": files["pairs"].id,
                      "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": float("nan")}}}}).encode()
    assert b"NaN" in raw
    assert_400(post_job(server, raw), "method.dpo.hyperparameters.beta")
    assert len(server.client.fine_tuning.jobs.list(limit=100).data) == before


def test_a_bad_pair_is_refused_at_upload(server):
    row = dpo_row(1) | {"non_preferred_output": dpo_row(1)["preferred_output"]}
    with pytest.raises(openai.BadRequestError) as err:
        upload(server.client, "same.jsonl", [dpo_row(0), row])
    assert "same.jsonl:2" in err.value.message and "identical" in err.value.message


def test_job_config_maps_dpo_hyperparameters():
    """beta 'auto' leaves preference.beta to the trainer's auto (0.1); a number becomes preference.beta."""
    from tunewright.config import RunConfig
    from tunewright.serve.jobs_runner import job_config

    job = {"base_spec": "m", "seed": 1, "extras": {}, "method_type": "dpo",
           "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": "auto"}}
    auto = job_config(job, "pairs.jsonl", None, None)
    assert auto["objective"] == "dpo" and "preference" not in auto and auto["train"]["epochs"] == 2
    assert RunConfig.model_validate(auto).preference.beta == "auto"
    job["hyperparameters"]["beta"] = 0.5
    assert RunConfig.model_validate(job_config(job, "pairs.jsonl", None, 1e-5)).preference.beta == 0.5
    supervised = job | {"method_type": "supervised"}
    assert "objective" not in job_config(supervised, "chat.jsonl", None, None)


OLD_TABLES = """
CREATE TABLE files (id TEXT PRIMARY KEY, filename TEXT, purpose TEXT, bytes INTEGER, created_at INTEGER, path TEXT, rows INTEGER);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, model TEXT, base_spec TEXT, training_file TEXT, validation_file TEXT,
    hyperparameters TEXT, extras TEXT, suffix TEXT, seed INTEGER, status TEXT, created_at INTEGER,
    started_at INTEGER, finished_at INTEGER, fine_tuned_model TEXT, run_dir TEXT, error TEXT,
    trained_tokens INTEGER, pid INTEGER, last_step INTEGER DEFAULT 0, cancel_requested INTEGER DEFAULT 0, metadata TEXT
);
"""


def test_a_database_from_before_dpo_keeps_its_files_and_jobs_supervised(tmp_path):
    """Files uploaded before kinds were recorded are detected when a job names them; old jobs stay supervised."""
    import sqlite3

    from tunewright.serve.errors import OpenAIError
    from tunewright.serve.jobs import JobsService
    from tunewright.serve.jobs_store import JobStore

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(sft_row(1)) + "\n")
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        db.executescript(OLD_TABLES)
        db.execute("INSERT INTO files VALUES ('file-old', 'chat.jsonl', 'fine-tune', 10, 1, ?, 1)", (str(chat),))
        db.execute("INSERT INTO jobs (id, model, hyperparameters, seed, status, created_at) "
                   "VALUES ('ftjob-old', 'm', '{\"n_epochs\": 2}', 7, 'succeeded', 1)")
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    service = JobsService(store, registry=None, engine=None)  # the runner thread is not started
    row = store.file("file-old")
    assert row["kind"] is None and row["rows"] == 1
    service._require_kind(row, "supervised", "training_file")  # detected as instruction data: accepted
    with pytest.raises(OpenAIError) as err:
        service._require_kind(row, "dpo", "validation_file")
    assert err.value.param == "validation_file" and "messages format" in err.value.message
    old = service.job_object(store.job("ftjob-old"))
    assert old["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}

    run_dir = tmp_path / "run"  # a dpo job whose run has resolved its config: `auto` shows the values used
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": 3, "batch_size": 8}, "preference": {"beta": 0.1}}))
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": "auto"}
    store.add_job({"id": "ftjob-dpo", "model": "m", "hyperparameters": auto, "method_type": "dpo", "seed": 1,
                   "status": "running", "created_at": 2, "run_dir": str(run_dir)})
    job = service.job_object(store.job("ftjob-dpo"))
    resolved = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": resolved | {"beta": 0.1}}}
    assert job["hyperparameters"] == resolved  # OpenAI's top-level object has no beta
    store.close()
