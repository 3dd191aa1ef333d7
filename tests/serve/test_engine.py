"""The batching engine in-process: late requests join a running batch and still get their solo answers."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from run_folders import make_adapter_run


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; many threads on a shared 2-core box spin instead of working."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir):
    from tunewright.serve.registry import Registry

    tmp = tmp_path_factory.mktemp("engine")
    reg = Registry()
    reg.add(str(make_adapter_run(tmp, tiny_model_dir, "lora-a", seed=1)))
    reg.add(str(make_adapter_run(tmp, tiny_model_dir, "lora-b", seed=2)))
    reg.add(str(tiny_model_dir), "base")
    reg.add(str(make_adapter_run(tmp, tiny_model_dir, "dora", seed=3, method="dora")), "dora")
    return reg


@pytest.fixture
def engine():
    from tunewright.serve.engine import Engine

    eng = Engine(max_batch_size=8)
    eng.start()
    yield eng
    eng.stop()


class Collector:
    """Gathers one request's events and remembers the largest batch it was decoded in."""

    def __init__(self, engine):
        self.engine, self.done, self.result, self.widest, self.events = engine, threading.Event(), None, 0, 0
        self.request = None  # the GenerationRequest, once submitted

    def __call__(self, event: dict) -> None:
        self.events += 1
        self.widest = max(self.widest, self.engine.running)
        if event["type"] in ("done", "error"):
            self.result = event
            self.done.set()


def submit(engine, registry, model_id: str, text: str, max_tokens: int = 12, **kwargs) -> Collector:
    from tunewright.data.templates import generation_prompt_ids
    from tunewright.serve.engine import GenerationRequest

    served = registry.get(model_id)
    sink = Collector(engine)
    ids = generation_prompt_ids(served.tokenizer, [{"role": "user", "content": text}])
    sink.request = engine.submit(GenerationRequest(served, ids, max_tokens, sink, temperature=kwargs.pop("temperature", 0), **kwargs))
    return sink


def answer(engine, registry, model_id, text, **kwargs) -> str:
    sink = submit(engine, registry, model_id, text, **kwargs)
    assert sink.done.wait(60)
    assert sink.result["type"] == "done", sink.result
    return sink.result["text"]


def test_adapters_share_one_base(registry):
    groups = {registry.get(i).group.key for i in ("lora-a", "lora-b", "base", "dora")}
    assert len(groups) == 1 and len(registry.groups) == 1


def test_late_requests_join_the_running_batch(engine, registry):
    prompts = [("lora-a", "first question"), ("lora-b", "second, longer question about os.path"), ("base", "third")]
    solo = [answer(engine, registry, m, q, max_tokens=24) for m, q in prompts]
    first = submit(engine, registry, *prompts[0], max_tokens=24)
    start = engine.steps
    while engine.steps < start + 4:  # the first request is mid-decode
        time.sleep(0.001)
    later = [submit(engine, registry, m, q, max_tokens=24) for m, q in prompts[1:]]
    for sink in [first, *later]:
        assert sink.done.wait(60)
    assert [s.result["text"] for s in [first, *later]] == solo
    assert max(s.widest for s in later) >= 2, "the late requests should have joined the running batch"


def test_dora_adapter_is_batched_on_its_own(engine, registry):
    assert registry.get("dora").batch_key != registry.get("lora-a").batch_key == registry.get("base").batch_key
    solo = [answer(engine, registry, m, "hello there") for m in ("dora", "lora-a", "base")]
    sinks = [submit(engine, registry, m, "hello there") for m in ("dora", "lora-a", "base")]
    for sink in sinks:
        assert sink.done.wait(60)
    assert [s.result["text"] for s in sinks] == solo


def test_stop_ids_and_max_tokens_end_a_request(engine, registry):
    import dataclasses

    served = registry.get("lora-a")
    eot = served.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eot in served.stop_ids
    everything_stops = dataclasses.replace(served, stop_ids=frozenset(range(served.group.vocab_size)))
    nothing_stops = dataclasses.replace(served, stop_ids=frozenset())
    registry_of = {"stops": everything_stops, "runs": nothing_stops}
    stopped = submit(engine, _Only(registry_of), "stops", "count", max_tokens=5)
    capped = submit(engine, _Only(registry_of), "runs", "count", max_tokens=5)
    assert stopped.done.wait(60) and capped.done.wait(60)
    assert (stopped.result["finish_reason"], stopped.result["completion_tokens"], stopped.result["text"]) == ("stop", 1, "")
    assert (capped.result["finish_reason"], capped.result["completion_tokens"]) == ("length", 5)


class _Only:
    """A stand-in registry holding just the given served models."""

    def __init__(self, served: dict):
        self.served = served

    def get(self, model_id: str):
        return self.served[model_id]


def test_cancelled_request_leaves_the_batch(engine, registry):
    next_solo = answer(engine, registry, "lora-b", "next")
    sink = submit(engine, registry, "lora-a", "a long answer please", max_tokens=900)
    while sink.events == 0:  # it is decoding
        time.sleep(0.001)
    sink.request.cancelled = True
    deadline = time.monotonic() + 30
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.running == 0 and not sink.done.is_set()
    assert answer(engine, registry, "lora-b", "next") == next_solo


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    from tunewright.serve.sampling import nucleus

    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    kept = nucleus(probs.clone(), 0.7)
    assert torch.allclose(kept, torch.tensor([0.0, 0.625, 0.375, 0.0]))
    assert nucleus(probs.clone(), 0.01).argmax() == 1


def test_left_pad_aligns_the_newest_tokens():
    from tunewright.evaluate.generate import left_pad

    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


class BrokenSink(Collector):
    """A client callback that raises on its second text delta: a fault in one request's own plumbing."""

    def __init__(self, engine):
        super().__init__(engine)
        self.deltas = 0

    def __call__(self, event: dict) -> None:
        if event["type"] == "delta":
            self.deltas += 1
            if self.deltas == 2:
                raise RuntimeError("this client's callback is broken")
        super().__call__(event)


def test_one_bad_request_fails_alone_and_bystanders_get_their_solo_answers(engine, registry):
    """A seed the generator refuses, a temperature sampling chokes on and a broken sink each fail only their request."""
    from tunewright.data.templates import generation_prompt_ids
    from tunewright.serve.engine import GenerationRequest

    bystanders = [("lora-a", "first bystander", {}), ("lora-b", "second bystander", {"temperature": 1.0, "seed": 7}),
                  ("base", "third bystander", {"temperature": 0.8, "top_p": 0.9, "seed": 3})]
    solo = [answer(engine, registry, m, q, max_tokens=40, **kw) for m, q, kw in bystanders]
    running = [submit(engine, registry, m, q, max_tokens=40, **kw) for m, q, kw in bystanders]
    start = engine.steps
    while engine.steps < start + 3:  # the bystanders are mid-decode
        time.sleep(0.001)
    bad_seed = submit(engine, registry, "lora-a", "bad seed", max_tokens=40, temperature=1.0, seed=2**64)
    bad_temperature = submit(engine, registry, "lora-b", "bad temperature", max_tokens=40, temperature=float("nan"))
    served = registry.get("base")
    broken = BrokenSink(engine)
    ids = generation_prompt_ids(served.tokenizer, [{"role": "user", "content": "broken client"}])
    engine.submit(GenerationRequest(served, ids, 40, broken, temperature=0))
    for sink in [*running, bad_seed, bad_temperature, broken]:
        assert sink.done.wait(60)
    assert [s.result["type"] for s in running] == ["done"] * 3, [s.result for s in running]
    assert [s.result["text"] for s in running] == solo
    assert "Overflow" in bad_seed.result["message"] and bad_seed.result["type"] == "error"
    assert bad_temperature.result["type"] == "error"
    assert bad_seed.widest >= 1, "the bad request should have arrived while the bystanders were running"
    deadline = time.monotonic() + 30
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.running == 0 and broken.deltas == 2 and "callback is broken" in broken.result["message"]
    assert answer(engine, registry, *bystanders[0][:2], max_tokens=40) == solo[0], "the engine still answers"


def test_a_prompt_that_breaks_prefill_fails_alone(engine, registry):
    """Admitted in one group with a prompt the model cannot embed, a good request still gets its solo answer."""
    from tunewright.serve.engine import GenerationRequest

    good_solo = answer(engine, registry, "lora-a", "a good prompt")
    gate = threading.Event()
    engine.call(lambda: gate.wait(30))  # hold the worker so both requests are admitted together
    served = registry.get("lora-b")
    bad = Collector(engine)
    engine.submit(GenerationRequest(served, [served.group.vocab_size + 10**6], 12, bad, temperature=0))
    good = submit(engine, registry, "lora-a", "a good prompt")
    gate.set()
    assert good.done.wait(60) and bad.done.wait(60)
    assert bad.result["type"] == "error"
    assert good.result["type"] == "done" and good.result["text"] == good_solo
