"""The real server, started as a subprocess on a free loopback port, driven by the official openai client."""
from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from run_folders import make_adapter_run, make_full_run
from servers import free_port, start_server, stop_server

API_KEY = "sk-test-tunewright"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MODELS = ("run-a", "run-b", "full-run")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """One server for the module: two adapters on one tiny base, plus a full fine-tune."""
    tmp = tmp_path_factory.mktemp("serve")
    runs = [make_adapter_run(tmp, tiny_model_dir, "run-a", seed=1), make_adapter_run(tmp, tiny_model_dir, "run-b", seed=2),
            make_full_run(tmp, tiny_model_dir, "full-run")]
    port = free_port()
    proc = start_server([str(r) for r in runs] + ["--api-key", API_KEY], port, tmp / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def chat(client, model: str, text: str, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": 12} | kwargs
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


@pytest.fixture(scope="module")
def fresh_answer(client) -> str:
    """run-a's greedy answer to one question while the server is fresh (the first test asks for it)."""
    return chat(client, "run-a", "still there?").choices[0].message.content


def test_lists_every_served_model(client, server, fresh_answer):
    assert {m.id for m in client.models.list()} == set(MODELS)
    assert client.models.retrieve("run-a").id == "run-a"
    health = httpx.get(f"{server}/health").json()
    assert health["bases_in_memory"] == 2, "run-a and run-b share one base; full-run has its own"


def test_chat_completion(client):
    response = chat(client, "run-a", "What does os.path.join do?")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    usage = response.usage
    assert choice.finish_reason == ("length" if usage.completion_tokens == 12 else "stop")
    assert 0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    other = chat(client, "run-b", "What does os.path.join do?")
    assert other.choices[0].message.content != choice.message.content, "different adapters answer differently"


def test_chat_streaming_matches_non_streaming(client):
    whole = chat(client, "run-b", "Name a stdlib module.", max_tokens=16)
    stream = chat(client, "run-b", "Name a stdlib module.", max_tokens=16, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_stream_ends_with_done(server):
    body = {"model": "run-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_completions_and_stop_sequence(client):
    first = client.completions.create(model="full-run", prompt="hello world", max_tokens=10, temperature=0)
    text = first.choices[0].text
    assert first.object == "text_completion" and first.usage.completion_tokens == 10 and len(text) >= 4
    stop = text[2:4]
    cut = client.completions.create(model="full-run", prompt="hello world", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="full-run", prompt="hello world", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


def test_seed_makes_sampling_reproducible(client):
    a = chat(client, "run-a", "Say something.", temperature=1.0, top_p=0.9, seed=7, max_tokens=10)
    b = chat(client, "run-a", "Say something.", temperature=1.0, top_p=0.9, seed=7, max_tokens=10)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    missing = httpx.get(f"{server}/v1/models")
    assert missing.status_code == 401 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{server}/health").status_code == 200, "health stays open for probes"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        chat(client, "no-such-model", "hi")
    assert err.value.code == "model_not_found"


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 2}, "n"),
    ({"max_tokens": 100_000}, "max_tokens"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -2**63 - 1}, "seed"),
])
def test_bad_parameters_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "run-a", "hi", **kwargs)
    assert err.value.status_code == 400 and err.value.param == param


def test_seed_at_the_64_bit_limits_is_accepted(client):
    for seed in (2**63 - 1, -2**63):
        response = chat(client, "run-a", "hi", temperature=1.0, seed=seed, max_tokens=4)
        assert response.usage.completion_tokens >= 1


def test_a_vanishing_temperature_answers_greedily(client):
    """0 < temperature < 1e-38 used to overflow the scaled logits to inf and fail in sampling."""
    greedy = chat(client, "run-a", "Name a stdlib module.", temperature=0, max_tokens=8).choices[0].message.content
    tiny = chat(client, "run-a", "Name a stdlib module.", temperature=1e-300, seed=1, max_tokens=8)
    assert tiny.choices[0].message.content == greedy


def test_a_bad_seed_is_its_own_400_and_bystanders_get_their_answers(client, server):
    """The seed that used to fail the whole running batch with a 500 is refused alone."""
    questions = [(MODELS[i % 2], f"Bystander {i}, tell me about module {i}.") for i in range(4)]
    solo = [chat(client, m, q, max_tokens=64).choices[0].message.content for m, q in questions]
    bad = {"model": "run-a", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0, "seed": 2**64}

    def send_bad():
        while httpx.get(f"{server}/health").json()["running"] < 2:  # while the bystanders are decoding
            time.sleep(0.005)
        return httpx.post(f"{server}/v1/chat/completions", json=bad, headers=AUTH, timeout=60)

    with ThreadPoolExecutor(max_workers=5) as pool:
        bystanders = [pool.submit(chat, client, m, q, max_tokens=64) for m, q in questions]
        refused = pool.submit(send_bad).result()
        answers = [f.result().choices[0].message.content for f in bystanders]
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "seed" and refused.json()["error"]["code"] == "invalid_value"
    assert answers == solo


@pytest.mark.parametrize("path, body, param", [
    ("chat/completions", '{"model": "run-a", "messages": [{"role": "user", "content": "\\ud800 x"}]}', "messages[0].content"),
    ("chat/completions", '{"model": "run-a", "messages": [{"role": "user", "content": "ok"}, '
                         '{"role": "user", "content": [{"type": "text", "text": "a\\udfff"}]}]}', "messages[1].content[0].text"),
    ("completions", '{"model": "full-run", "prompt": "\\ud800 x"}', "prompt"),
    ("completions", '{"model": "full-run", "prompt": ["\\ud800 x"]}', "prompt[0]"),
    ("completions", '{"model": "full-\\ud800", "prompt": "x"}', "model"),
])
def test_lone_surrogate_is_400_naming_the_field(server, path, body, param):
    """JSON may escape half a UTF-16 pair; no text holds one, so it is the client's 400, not our 500."""
    response = httpx.post(f"{server}/v1/{path}", content=body.encode(), headers=AUTH | {"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, "invalid_value", "invalid_request_error")


def _assert_slot_freed_soon(server: str, within_s: float = 3.0) -> None:
    """A client that went away no longer holds a batch slot a moment later (a long answer takes seconds)."""
    gave_up = time.monotonic()
    while httpx.get(f"{server}/health").json()["running"] and time.monotonic() - gave_up < within_s:
        time.sleep(0.05)
    health = httpx.get(f"{server}/health").json()
    assert health["running"] == 0 and health["queued"] == 0, f"still generating {time.monotonic() - gave_up:.1f}s later"


def test_non_streaming_client_that_gives_up_frees_its_slot(client, server):
    """A long answer nobody waits for any more stops at once, as a dropped stream already does."""
    body = {"model": "run-a", "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 900, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):  # ~900 tokens take this tiny model several seconds
        httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=1.0)
    _assert_slot_freed_soon(server)
    assert chat(client, "run-a", "still there?", max_tokens=4).usage.completion_tokens >= 1


def test_streaming_client_that_disconnects_frees_its_slot(client, server):
    """Closing a stream after the first chunks cancels the rest of the generation."""
    body = {"model": "run-a", "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": 900, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=30) as response:
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data: ")
            if chunks >= 3:
                break
    _assert_slot_freed_soon(server)
    assert chat(client, "run-a", "still there?", max_tokens=4).usage.completion_tokens >= 1


def test_prompt_longer_than_context_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, "run-a", "word " * 2000)
    assert err.value.code == "context_length_exceeded"


def test_malformed_json_is_422_and_oversized_body_is_413(server):
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    broken = httpx.post(f"{server}/v1/chat/completions", content=b'{"model": "run-a", "messages": [', headers=headers)
    assert broken.status_code == 422 and broken.json()["error"]["code"] == "invalid_json"
    huge = b'{"model": "run-a", "messages": [{"role": "user", "content": "' + b"a" * (5 * 2**20) + b'"}]}'
    too_big = httpx.post(f"{server}/v1/chat/completions", content=huge, headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


def test_sixteen_concurrent_clients_get_the_sequential_answers(client, server):
    requests = [(MODELS[i % 3], f"Question {i}: what does module number {i} do?") for i in range(16)]
    one_at_a_time = [chat(client, m, q, max_tokens=16).choices[0].message.content for m, q in requests]
    steps_before = httpx.get(f"{server}/health").json()["steps"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda r: chat(client, *r, max_tokens=16).choices[0].message.content, requests))
    steps = httpx.get(f"{server}/health").json()["steps"] - steps_before
    assert together == one_at_a_time
    assert steps < 16 * 17 / 2, f"{steps} forward passes for 16 requests: they were not batched"


def test_server_is_healthy_after_everything(client, server, fresh_answer):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["queued"] == 0 and health["running"] == 0
    assert chat(client, "run-a", "still there?").choices[0].message.content == fresh_answer


def test_serve_command_refuses_a_busy_port_and_unknown_engine(tiny_model_dir):
    from typer.testing import CliRunner

    from tunewright.cli import app

    runner = CliRunner()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = runner.invoke(app, ["serve", str(tiny_model_dir), "--port", str(port)])
    assert taken.exit_code == 2 and "cannot listen" in taken.output
    engine = runner.invoke(app, ["serve", str(tiny_model_dir), "--engine", "tgi"])
    assert engine.exit_code == 2 and "unknown --engine" in engine.output
