"""The API the dashboard uses beyond OpenAI's, over plain HTTP on a real server: runs, data check, job preview, exports."""
from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile

import httpx
import pytest
from helpers import write_jsonl
from servers import DASHBOARD_KEY as KEY
from servers import bad_file, free_port, sum_rows


@pytest.fixture(scope="module")
def api(dashboard_server):
    with httpx.Client(base_url=dashboard_server, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        yield client


def upload(api, name: str, data: bytes) -> dict:
    answer = api.post("/v1/files", files={"file": (name, data)}, data={"purpose": "fine-tune"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_page_is_open_and_the_api_is_not(api):
    page = httpx.get(f"{api.base_url}/")
    assert page.status_code == 200 and '<script type="module" src="/dashboard/app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{api.base_url}/dashboard/app.js").status_code == 200
    assert httpx.get(f"{api.base_url}/dashboard/config.json").json() == {"api_key_required": True}
    refused = httpx.get(f"{api.base_url}/v1/runs")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"


def test_runs_lists_cli_runs_with_metrics_and_report(api, cli_runs):
    runs = {r["id"]: r for r in api.get("/v1/runs").json()["data"]}
    run = runs["cli-a"]
    assert run["source"] == "folder" and run["status"] == "succeeded" and run["method"] == "lora"
    assert run["hyperparameters"]["train"]["max_steps"] == 3 and run["has_report"] and run["eval"]["comparison"]["loss"]["verdict"]
    rows = api.get("/v1/runs/cli-a/metrics").json()["data"]
    assert [r["step"] for r in rows] == [1, 2, 3] and any("eval_loss" in r for r in rows)
    assert [r["step"] for r in api.get("/v1/runs/cli-a/metrics?after_step=2").json()["data"]] == [3]
    report = api.get("/v1/runs/cli-a/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html") and 'id="metrics"' in report.text
    for bad in ("/v1/runs/nope", "/v1/runs/..%2F..%2Fetc/metrics", "/v1/runs/nope/report"):
        missing = api.get(bad)
        assert missing.status_code == 404 and missing.json()["error"]["code"] in ("run_not_found", "unknown_url"), bad


def test_data_check_reports_bad_rows_by_file_and_line(api, tmp_path):
    checked = api.post("/v1/files/check", files={"file": ("bad.jsonl", bad_file(tmp_path / "bad.jsonl").read_bytes())})
    assert checked.status_code == 200, checked.text
    report = checked.json()
    assert report["bad_row_count"] == 1 and report["bad_rows"][0]["source"] == "bad.jsonl:3"
    assert report["rows"] == 4 and report["files"][0]["path"] == "bad.jsonl"
    assert "tw-check-" not in checked.text  # the server's temporary path never reaches the client
    assert sum(b["count"] for b in report["length_histogram"]) == 4 and report["guidance"]["size"]
    refused = api.post("/v1/files/check", files={"file": ("notes.txt", b"hello")})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "file"


def test_data_check_matches_the_cli_json(api, tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "good.jsonl", sum_rows(12))
    served = api.post("/v1/files/check", files={"file": ("good.jsonl", path.read_bytes())}, data={"max_seq_len": "64"}).json()
    cli = subprocess.run([sys.executable, "-m", "tunewright.cli", "data", "check", str(path), "--model", str(tiny_model_dir),
                          "--max-seq-len", "64", "--json"], capture_output=True, text=True, check=True, cwd=tmp_path)
    import json

    expected = json.loads(cli.stdout)
    for key in ("rows", "bad_row_count", "token_lengths", "length_histogram", "duplicates", "trained_tokens", "guidance"):
        assert served[key] == expected[key], key


def test_job_preview_resolves_auto_and_estimates_without_creating_a_job(api):
    training = upload(api, "train.jsonl", b"".join(f'{__import__("json").dumps(r)}\n'.encode() for r in sum_rows(20)))
    before = api.get("/v1/fine_tuning/jobs").json()["data"]
    body = {"model": api.get("/v1/models").json()["data"][0]["id"], "training_file": training["id"],
            "hyperparameters": {"batch_size": 4}, "tunewright": {"settings": {"train.max_steps": 7}}}
    preview = api.post("/v1/fine_tuning/jobs/validate", json=body)
    assert preview.status_code == 200, preview.text
    got = preview.json()
    assert got["training_examples"] == 20 and got["resolved"]["train"]["batch_size"] == 4
    assert isinstance(got["resolved"]["train"]["epochs"], float) and isinstance(got["resolved"]["train"]["learning_rate"], float)
    assert got["estimate"]["steps"] == 7 and got["estimate"]["memory_bytes"] > 0 and got["estimate"]["trainable_parameters"] > 0
    assert api.get("/v1/fine_tuning/jobs").json()["data"] == before
    wrong = api.post("/v1/fine_tuning/jobs/validate", json=body | {"training_file": "file-missing"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "training_file"


def test_export_and_archive_of_a_cli_run(api):
    archive = api.get("/v1/runs/cli-a/archive")
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert "adapter/adapter_config.json" in names and "eval/report.html" in names and not any(n.startswith("checkpoints/") for n in names)
    started = api.post("/v1/runs/cli-a/exports", json={"format": "hf"})
    assert started.status_code == 200, started.text
    export_id = started.json()["id"]
    deadline = time.monotonic() + 240
    while (listed := api.get("/v1/runs/cli-a/exports").json()["data"][0])["status"] == "running" and time.monotonic() < deadline:
        time.sleep(1)
    assert listed["status"] == "succeeded", listed
    content = api.get(f"/v1/runs/cli-a/exports/{export_id}/content")
    names = zipfile.ZipFile(io.BytesIO(content.content)).namelist()
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    bad = api.post("/v1/runs/cli-a/exports", json={"format": "onnx"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"


def test_serve_runs_must_be_a_folder(tmp_path, tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "tunewright.cli", "serve", str(tiny_model_dir), "--runs", str(tmp_path / "nope"),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--runs" in done.stderr and "no such folder" in done.stderr and "Traceback" not in done.stderr
