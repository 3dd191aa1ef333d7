"""OpenAI's SFT -> DPO flow through the jobs API: a DPO job whose `model` is a supervised job's result.

With OpenAI, `fine_tuned_model` of a finished job ("ft:...") is a valid `model` for the next job;
here it names a run folder, which `model:` accepts (a LoRA run's adapter is merged into its base),
so the second job trains from the first job's run. Driven end to end with the official openai client.
"""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from servers import JobServer, dpo_row, sft_row, upload, wait_for

DONE = ("succeeded", "failed", "cancelled")
TWO_STEPS = {"tunewright": {"settings": {"train.max_steps": 2}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("jobs-chain")
    with pytest.MonkeyPatch.context() as env:  # the merged SFT model is cached here, not in the user's home
        env.setenv("TUNEWRIGHT_HOME", str(tmp / "home"))
        server = JobServer(tmp, tiny_model_dir)
        server.client = server.start()
    yield server
    server.stop()


def test_dpo_job_trains_from_a_supervised_jobs_fine_tuned_model(server):
    client = server.client
    chat = upload(client, "chat.jsonl", [sft_row(i) for i in range(4)])
    sft = client.fine_tuning.jobs.create(model=str(server.model_dir), training_file=chat.id, suffix="sft",
                                         hyperparameters={"n_epochs": 1, "batch_size": 2}, extra_body=TWO_STEPS)
    sft_done = wait_for(client, sft.id, DONE)
    assert sft_done.status == "succeeded", sft_done.error
    sft_run = Path(server.job_row(sft.id)["run_dir"])

    pairs = upload(client, "pairs.jsonl", [dpo_row(i) for i in range(4)])
    method = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1, "batch_size": 2}}}
    dpo = client.fine_tuning.jobs.create(model=sft_done.fine_tuned_model, training_file=pairs.id, suffix="dpo",
                                         method=method, extra_body=TWO_STEPS)
    assert dpo.status == "queued" and dpo.model == sft_done.fine_tuned_model
    dpo_done = wait_for(client, dpo.id, DONE)
    assert dpo_done.status == "succeeded", dpo_done.error
    assert dpo_done.fine_tuned_model.startswith(f"ft:{server.model_dir.name}:tunewright:dpo:")  # not ft:ft:...

    # an unknown model is still a 400 whose list of fine-tunable models now names the fine-tune
    refused = httpx.post(f"http://127.0.0.1:{server.port}/v1/fine_tuning/jobs", timeout=30,
                         json={"model": "no-such-model", "training_file": chat.id})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_available"
    assert sft_done.fine_tuned_model in refused.json()["error"]["message"]

    dpo_run = Path(server.job_row(dpo.id)["run_dir"])
    config = yaml.safe_load((dpo_run / "config.yaml").read_text())
    assert config["model"] == str(sft_run) and config["objective"] == "dpo"
    assert (dpo_run / "adapter" / "adapter_config.json").is_file()
    assert dpo_done.fine_tuned_model in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(model=dpo_done.fine_tuned_model, max_tokens=5, temperature=0,
                                            messages=[{"role": "user", "content": "What is 2 plus 2?"}])
    assert answer.choices[0].message.content is not None
