"""LoRA/DoRA in bf16 with the frozen base stored in bf16 (train/frozen_base.py) against autocast casting an fp32 base.

Every run pins `train.precision` (bf16 on purpose here; fp32 where the point is that nothing changes)
and `train.bf16_base`. Tolerances:
- LoRA: the two paths hand every matmul the same bf16 values (autocast rounds an fp32 weight to
  nearest, which is what storing it in bf16 does once), and everything else (embeddings, norms,
  residual stream, LoRA weights, optimizer) is fp32 in both: measured identical to the last bit on an
  amx_bf16 CPU, held to 1e-6 relative (fp32 round-off only; any real change in the maths is >= 1e-4).
- DoRA: its weight norm reads the base weight itself, so it sees the bf16-rounded values instead of
  the fp32 ones; measured max 2.5e-4 relative on the loss over 6 steps of this tiny model (rows of
  only 64 values, so the rounding averages out less than in a real model), held to 1e-3: the bound
  test_bf16.py holds bf16 autocast itself to against fp32, a quarter of one bf16 rounding step.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    assert_same_adapter,
    build_tiny_model,
    build_tokenizer,
    repeat_word_rows,
    write_jsonl,
)

from tunewright.config import load_config
from tunewright.train import run as run_module
from tunewright.train import train
from tunewright.train.frozen_base import restore_frozen_base, store_frozen_base_in_bf16
from tunewright.train.hparams import native_bf16

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_bf16 = pytest.mark.skipif(not native_bf16(DEVICE), reason=f"no native bf16 on {DEVICE.type}: emulated bf16 is ~100x slower")
LORA_RTOL = 1e-6
DORA_RTOL = 1e-3
RESIDUAL_RTOL = 1e-2
SETS = {"train.precision": "bf16", "train.max_steps": 6, "train.batch_size": 8, "train.learning_rate": 1e-2,
        "lora.dropout": 0.1, "train.threads": 1, "eval.after_train": "false", "train.save_every": 3,
        "train.eval_every": 3, "train.save_total_limit": 5, "train.warmup_ratio": 0.0, "train.bf16_base": "true"}



@pytest.fixture
def data(tmp_path) -> dict:
    return {"train": str(write_jsonl(tmp_path / "train.jsonl", repeat_word_rows(32))),
            "validation": str(write_jsonl(tmp_path / "val.jsonl", repeat_word_rows(6, offset=3)))}


def _cfg(model_dir, data, out, **sets):
    merged = {**SETS, "data.validation": data["validation"], **{k.replace("__", "."): v for k, v in sets.items()}}
    return load_config(model=str(model_dir), data__train=data["train"], output_dir=str(out),
                       overrides=[f"{k}={v}" for k, v in merged.items()])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _relative(a: list[float], b: list[float]) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return ((ta - tb).abs() / tb.abs()).max().item()


class DtypeSpy:
    """The dtypes of the model's parameters as the training loop receives it."""

    def __init__(self, monkeypatch):
        self.seen: list[dict[str, dict[str, torch.dtype]]] = []
        original = run_module.run_training

        def spy(model, *args, **kwargs):
            frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
            trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
            self.seen.append({"frozen": frozen, "trainable": trainable})
            return original(model, *args, **kwargs)

        monkeypatch.setattr(run_module, "run_training", spy)


def _fresh_weights(model_dir) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())


@needs_bf16
def test_lora_on_a_bf16_stored_base_trains_exactly_as_autocast_casting_the_fp32_base(tiny_model_dir, data, tmp_path, monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    spy = DtypeSpy(monkeypatch)
    runs, results = {}, {}
    for stored in ("bf16", "fp32"):
        runs[stored] = tmp_path / stored
        # learning_rate auto with the range test: it too trains on the bf16 base and must pick the same rate
        results[stored] = train(_cfg(tiny_model_dir, data, runs[stored], train__bf16_base=str(stored == "bf16").lower(),
                                     train__learning_rate="auto", train__lr_range_test="true"))
    on_bf16, on_fp32 = spy.seen
    linear = {n: d for n, d in on_bf16["frozen"].items() if ".base_layer." in n}
    assert linear and set(linear.values()) == {torch.bfloat16}, "every frozen linear weight of the blocks is stored in bf16"
    assert {d for n, d in on_bf16["frozen"].items() if n not in linear} == {torch.float32}, "embeddings (tied head) and norms stay fp32"
    assert set(on_bf16["trainable"].values()) == {torch.float32}, "LoRA weights stay fp32 masters"
    assert set(on_fp32["frozen"].values()) == {torch.float32}, "train.bf16_base=false keeps the loaded base"
    assert results["bf16"].summary["frozen_base_bf16"] and not results["fp32"].summary["frozen_base_bf16"]

    lrs = {k: yaml.safe_load((r / "config.yaml").read_text())["train"]["learning_rate"] for k, r in runs.items()}
    assert lrs["bf16"] == lrs["fp32"], lrs
    rows = {k: _metrics(r) for k, r in runs.items()}
    losses = {k: [row["loss"] for row in v] for k, v in rows.items()}
    evals = {k: [row["eval_loss"] for row in v if "eval_loss" in row] for k, v in rows.items()}
    assert len(losses["bf16"]) == 6 and _relative(losses["bf16"], losses["fp32"]) <= LORA_RTOL, losses
    assert _relative(evals["bf16"], evals["fp32"]) <= LORA_RTOL, evals
    assert_same_adapter(runs["bf16"], runs["fp32"])

    saved = load_file(str(runs["bf16"] / "adapter" / "adapter_model.safetensors"))
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}, "the adapter is saved in fp32"
    optimizer = torch.load(runs["bf16"] / "checkpoints" / "step-3" / "state.pt", weights_only=False)["optimizer"]
    moments = [t for s in optimizer["state"].values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and {t.dtype for t in moments} == {torch.float32}, "the optimizer state is fp32"

    # after training the base is back exactly as loaded: what eval, merges and RunResult.model see
    fresh = _fresh_weights(tiny_model_dir)
    restored = dict(results["bf16"].model.get_base_model().named_parameters())
    for name, p in restored.items():
        if "lora_" not in name:
            assert p.dtype == torch.float32 and torch.equal(p, fresh[name.replace(".base_layer.", ".")]), name
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), runs["bf16"] / "adapter").eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 300]])
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, results["bf16"].model(ids).logits, atol=0, rtol=0)


class ResidualSpy:
    """The dtype of each decoder layer's output (the residual stream) in the training forwards."""

    def __init__(self, monkeypatch):
        self.dtypes: set[torch.dtype] = set()
        original = run_module.run_training
        spy = self

        def hooked(model, *args, **kwargs):
            handles = [layer.register_forward_hook(spy._record) for layer in model.get_base_model().model.layers]
            try:
                return original(model, *args, **kwargs)
            finally:
                for h in handles:
                    h.remove()

        monkeypatch.setattr(run_module, "run_training", hooked)

    def _record(self, module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if torch.is_grad_enabled():
            self.dtypes.add(hidden.dtype)


@needs_bf16
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_bf16_base_all_trains_with_a_bf16_residual_stream_within_the_stated_bound(tiny_model_dir, data, tmp_path, monkeypatch, method):
    spy, residual = DtypeSpy(monkeypatch), ResidualSpy(monkeypatch)
    runs, results = {}, {}
    for mode in ("all", "false"):
        residual.dtypes.clear()
        runs[mode] = tmp_path / mode
        results[mode] = train(_cfg(tiny_model_dir, data, runs[mode], method=method, train__bf16_base=mode))
        if mode == "all":
            assert residual.dtypes == {torch.bfloat16}, "every decoder layer hands on a bf16 residual stream"
    assert residual.dtypes == {torch.float32}, "autocast over the fp32 base keeps the residual stream fp32"
    on_all, on_fp32 = spy.seen
    assert set(on_all["frozen"].values()) == {torch.bfloat16}, "embeddings, norms and linear weights are all stored in bf16"
    assert set(on_all["trainable"].values()) == {torch.float32}, "LoRA weights stay fp32 masters"
    assert set(on_fp32["frozen"].values()) == {torch.float32}
    assert results["all"].summary["frozen_base_bf16"]

    losses = {k: [row["loss"] for row in _metrics(r)] for k, r in runs.items()}
    evals = {k: [row["eval_loss"] for row in _metrics(r) if "eval_loss" in row] for k, r in runs.items()}
    relative = max(_relative(losses["all"], losses["false"]), _relative(evals["all"], evals["false"]))
    print(f"{method}, bf16 residual stream vs autocast over fp32: max relative loss difference {relative:.1e}")
    assert len(losses["all"]) == 6 and relative <= RESIDUAL_RTOL, losses
    assert losses["all"] != losses["false"], "a bf16 residual stream rounds differently: the test would not see the mode"

    # after training the base is back exactly as loaded, embeddings and norms included
    fresh = _fresh_weights(tiny_model_dir)
    for name, p in results["all"].model.get_base_model().named_parameters():
        if "lora_" not in name and "magnitude" not in name:
            assert p.dtype == torch.float32 and torch.equal(p, fresh[name.replace(".base_layer.", ".")]), name


@needs_bf16
def test_dora_on_a_bf16_stored_base_stays_within_the_stated_bound(tiny_model_dir, data, tmp_path):
    losses = {}
    for stored in ("bf16", "fp32"):
        run = tmp_path / stored
        train(_cfg(tiny_model_dir, data, run, method="dora", train__bf16_base=str(stored == "bf16").lower()))
        losses[stored] = [row["loss"] for row in _metrics(run)]
    relative = _relative(losses["bf16"], losses["fp32"])
    print(f"DoRA, bf16-stored base vs fp32 base under autocast: max relative loss difference {relative:.1e}")
    assert len(losses["bf16"]) == 6 and relative <= DORA_RTOL, losses


@needs_bf16
def test_dpo_reference_pass_on_the_bf16_base_gives_the_same_run(tiny_model_dir, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Repeat the word {w}."}],
             "chosen": [{"role": "assistant", "content": f"{w} {w} {w}"}],
             "rejected": [{"role": "assistant", "content": f"{o}, {o}."}]}
            for w, o in zip(["apple", "river", "stone", "cloud"] * 3, ["green", "tiger", "paper", "light"] * 3, strict=True)]
    pairs = {"train": str(write_jsonl(tmp_path / "pairs.jsonl", rows)), "validation": str(write_jsonl(tmp_path / "val.jsonl", rows[:4]))}
    metrics = {}
    for stored in ("bf16", "fp32"):
        run = tmp_path / stored
        train(_cfg(tiny_model_dir, pairs, run, objective="dpo", train__max_steps=3, train__batch_size=4,
                   train__bf16_base=str(stored == "bf16").lower()))
        metrics[stored] = _metrics(run)
    for key in ("loss", "reward_margin", "eval_loss"):
        a, b = ([r[key] for r in metrics[s] if key in r] for s in ("bf16", "fp32"))
        assert len(a) == len(b) > 0, key
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=LORA_RTOL, atol=1e-9, msg=f"{key}: {a} vs {b}")
    assert metrics["bf16"][-1]["reward_margin"] != 0.0, "the adapter moved away from the reference"


@needs_bf16
def test_evaluation_after_training_sees_the_base_as_loaded_not_bf16_rounded(tiny_model_dir, data, tmp_path):
    import tunewright
    from tunewright.evaluate import evaluate

    run = tmp_path / "run"
    result = tunewright.train(_cfg(tiny_model_dir, data, run, train__max_steps=3, eval__after_train="true",
                                   eval__limit=2, eval__max_new_tokens=4))
    assert result.summary["frozen_base_bf16"]
    on_disk = json.loads((run / "eval" / "results.json").read_text())
    assert list(on_disk["sides"]) == ["base", "tuned"]
    # the in-memory evaluation right after training equals a fresh fp32 load of the saved run
    again = evaluate(str(run), data=[data["validation"]], limit=2, max_new_tokens=4, output_dir=tmp_path / "again")
    for side in ("base", "tuned"):
        assert again["metrics"][side]["loss"] == pytest.approx(on_disk["metrics"][side]["loss"], rel=1e-5)
        assert [e[f"{side}_answer"] for e in again["examples"]] == [e[f"{side}_answer"] for e in on_disk["examples"]]


@needs_bf16
def test_resume_of_a_bf16_base_run_gives_the_same_adapter_as_an_uninterrupted_run(tiny_model_dir, data, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(tiny_model_dir, data, straight))
    # what a run killed right after its step-3 checkpoint leaves behind, then --resume
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / "step-3", killed / "checkpoints" / "step-3")
    shutil.copy(straight / "config.yaml", killed / "config.yaml")
    (killed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _metrics(straight)[:3]))
    resumed = train(_cfg(tiny_model_dir, data, killed), resume=True)
    assert resumed.summary["frozen_base_bf16"]
    assert_same_adapter(straight, killed)
    assert [r["loss"] for r in _metrics(killed)] == [r["loss"] for r in _metrics(straight)]


@pytest.mark.parametrize(("precision", "method"), [("fp32", "lora"), ("bf16", "full"), ("bf16", "freeze")])
def test_fp32_runs_and_full_or_freeze_keep_every_weight_in_fp32(tiny_model_dir, data, tmp_path, monkeypatch, precision, method):
    if precision == "bf16" and not native_bf16(DEVICE):
        pytest.skip("no native bf16 here")
    spy = DtypeSpy(monkeypatch)
    result = train(_cfg(tiny_model_dir, data, tmp_path / "run", method=method, train__precision=precision,
                        train__max_steps=1, train__bf16_base="true", freeze__trainable_layers=1))
    [seen] = spy.seen
    assert set(seen["frozen"].values()) <= {torch.float32} and set(seen["trainable"].values()) == {torch.float32}
    assert result.summary["frozen_base_bf16"] is False


def test_tied_heads_and_trainable_weights_keep_fp32_and_restore_is_exact_both_ways(tmp_path):
    from tunewright.config import load_config as cfg_of
    from tunewright.train.methods import apply_method

    tok = build_tokenizer("chatml")
    plain = build_tiny_model(tok)
    base_dir = tmp_path / "base"
    plain.save_pretrained(base_dir)  # what restore reloads when bf16 cannot hold the loaded values
    model = apply_method(plain, cfg_of(model="x", overrides=["method=lora"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stored = store_frozen_base_in_bf16(model)
    head = model.get_base_model().lm_head.weight
    assert head.dtype == torch.float32 and head is model.get_base_model().model.embed_tokens.weight, "tied head untouched"
    assert stored.names and not stored.exact, "random fp32 weights are not all representable in bf16"
    restore_frozen_base(model, stored, str(base_dir))
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n

    # weights that are bf16 values already (a hub checkpoint saved in bf16): casting back restores them, no reload
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                p.copy_(p.to(torch.bfloat16).float())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stored = store_frozen_base_in_bf16(model)
    assert stored.exact
    restore_frozen_base(model, stored, "/no/such/folder")  # would fail if it tried to reload
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n

    # an untied frozen LM head is a plain linear layer: stored in bf16 too (the chunked loss casts it anyway)
    untied = build_tiny_model(tok)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    untied.requires_grad_(False)
    store_frozen_base_in_bf16(untied)
    assert untied.lm_head.weight.dtype == torch.bfloat16 and untied.model.embed_tokens.weight.dtype == torch.float32
