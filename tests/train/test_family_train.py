"""Every model family, trained and merged for real: 2-step LoRA runs, merge equality, training from GGUF.

For each tiny family model (tests/families.py): `tunewright.train` runs 2 LoRA steps in fp32 and
writes an adapter stock PEFT loads; every LoRA matrix moved; `all-linear` wrapped exactly the
family's projections (Phi-3's fused qkv_proj / gate_up_proj, never lm_head); `tunewright merge`
gives the adapter-on-base logits within 1e-5 and a folder stock transformers loads. Then the
family is exported with `tunewright export --format gguf --quant f32` and `tunewright train
--model file.gguf` trains from it (transformers' GGUF loader, via models._materialize_gguf).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from families import FAMILY_SPECS
from helpers import write_jsonl
from typer.testing import CliRunner

from tunewright.cli import app
from tunewright.config import load_config
from tunewright.errors import UserError
from tunewright.train import train

ATTENTION_AND_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
# what PEFT's all-linear must wrap in each architecture: every projection, never the LM head
LORA_TARGETS = {"phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}
# llama.cpp runs Mistral on the Llama graph, so its GGUF says `llama`: the same model without sliding window
GGUF_MODEL_TYPE = {"mistral": "llama"}
WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]
TOLERANCE = 1e-5  # fp32 merge: float rounding only


def _family(family_dir: Path) -> str:
    return family_dir.name.removeprefix("tiny-")


def _rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Repeat the word {w}."},
                          {"role": "assistant", "content": f"{w} {w} {w}"}]} for w in WORDS]


def _tiny_settings(output: Path) -> list[str]:
    """Two fp32 steps on one thread, a high constant learning rate so every LoRA matrix moves."""
    return ["train.max_steps=2", "train.precision=fp32", "train.threads=1", "train.learning_rate=1e-2",
            "train.scheduler=constant", "train.warmup_ratio=0", "train.batch_size=4", "eval.after_train=false",
            "data.max_seq_len=256", f"output_dir={output}"]


def _probe_ids(tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "Repeat the word stone."}, {"role": "assistant", "content": "stone stone"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def _cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"tunewright {' '.join(args)} exited {result.exit_code}:\n{result.output}"


@pytest.fixture(autouse=True)
def _own_model_cache(tmp_path, monkeypatch):
    """Dequantized GGUF bases go to this test's folder, not the user's ~/.cache."""
    monkeypatch.setenv("TUNEWRIGHT_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", _rows())


@pytest.fixture(scope="module")
def lora_run(family_dir, data_file, tmp_path_factory) -> Path:
    """A 2-step LoRA run on the family's tiny model, through the real `tunewright.train`."""
    run = tmp_path_factory.mktemp("runs") / _family(family_dir)
    overrides = _tiny_settings(run)
    train(load_config(model=str(family_dir), data__train=str(data_file), overrides=overrides))
    return run


@pytest.fixture(scope="module")
def adapter_on_base(lora_run, family_dir):
    """Stock PEFT's adapter-on-base model and the probe ids, the reference for merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    return model, _probe_ids(AutoTokenizer.from_pretrained(lora_run / "adapter"))


def test_lora_run_writes_a_stock_peft_adapter_whose_every_matrix_moved(lora_run, adapter_on_base, family_dir):
    from transformers import AutoModelForCausalLM

    model, ids = adapter_on_base
    lora_b = {name: p for name, p in model.named_parameters() if "lora_B" in name}
    assert lora_b, "the adapter has no LoRA matrices"
    still_zero = [name for name, p in lora_b.items() if not p.detach().abs().max() > 0]
    assert not still_zero, f"LoRA B starts at zero and did not move in 2 steps: {still_zero[:4]}"
    base = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        moved = (model(ids).logits - base(ids).logits).abs().max().item()
    assert moved > 1e-2, f"the adapter barely changes the logits ({moved:.1e})"
    summary = json.loads((lora_run / "summary.json").read_text())
    assert summary["steps"] == 2


def test_all_linear_targets_every_projection_of_the_family(lora_run, family_dir):
    config = json.loads((family_dir / "config.json").read_text())
    expected = LORA_TARGETS.get(config["model_type"], ATTENTION_AND_MLP)
    adapter = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == expected
    from safetensors import safe_open

    with safe_open(str(lora_run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())  # safe_open is not a dict: it has keys() but no iteration
    wrapped = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in names if ".lora_" in key}
    layers = {key.split(".layers.")[1].split(".")[0] for key in names}
    assert wrapped == expected, "every projection of every layer carries LoRA weights, and nothing else"
    assert layers == {str(i) for i in range(config["num_hidden_layers"])}


def test_merge_gives_adapter_on_base_logits(lora_run, adapter_on_base, family_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model, ids = adapter_on_base
    merged = tmp_path / "merged"
    _cli("merge", str(lora_run), "--output", str(merged))
    stock = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        reference, logits = model(ids).logits, stock(ids).logits
    torch.testing.assert_close(logits, reference, atol=TOLERANCE, rtol=TOLERANCE)
    assert json.loads((merged / "config.json").read_text())["model_type"] == json.loads((family_dir / "config.json").read_text())["model_type"]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    end_of_turn = FAMILY_SPECS[_family(family_dir)].end_of_turn
    # the run's template: the base's, with the run's template variables as defaults (Qwen3: enable_thinking false)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(lora_run / "adapter").chat_template
    assert tokenizer.chat_template.endswith(AutoTokenizer.from_pretrained(family_dir).chat_template)
    eos = GenerationConfig.from_pretrained(merged).eos_token_id
    assert tokenizer.convert_tokens_to_ids(end_of_turn) in (eos if isinstance(eos, list) else [eos])


def test_training_starts_from_the_family_gguf(family_dir, data_file, tmp_path):
    family = _family(family_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = tmp_path / f"{family}-f32.gguf"
    _cli("export", str(family_dir), "--format", "gguf", "--quant", "f32", "--output", str(gguf))
    run = tmp_path / "run"
    _cli("train", "--model", str(gguf), "--data", str(data_file), *[a for s in _tiny_settings(run) for a in ("--set", s)])
    base_dir = Path(json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"])
    # the dequantized base is the same model: config, weights (f32 is exact), tokenizer and chat template
    config = json.loads((base_dir / "config.json").read_text())
    assert config["model_type"] == GGUF_MODEL_TYPE.get(family, FAMILY_SPECS[family].model_type)
    assert "quantization_config" not in config
    hf_tokenizer, tokenizer = AutoTokenizer.from_pretrained(family_dir), AutoTokenizer.from_pretrained(base_dir)
    ids = _probe_ids(hf_tokenizer)
    assert _probe_ids(tokenizer).tolist() == ids.tolist()
    assert tokenizer.chat_template == hf_tokenizer.chat_template
    assert len(tokenizer) == len(hf_tokenizer) == config["vocab_size"], "no token without an embedding"
    with torch.no_grad():
        hf_logits = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32)(ids).logits
        gguf_logits = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)(ids).logits
    torch.testing.assert_close(gguf_logits, hf_logits, atol=TOLERANCE, rtol=TOLERANCE)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_target_modules_missing_from_phi3_name_its_linear_layers():
    """Phi-3 fuses q/k/v and gate/up: `[q_proj, v_proj]` must fail with the names this model does have."""
    from families import build_family_model, build_family_tokenizer

    from tunewright.train.methods import apply_method

    cfg = load_config(model="phi3", data__train="x.jsonl", overrides=["lora.target_modules=[q_proj,v_proj]"])
    model = build_family_model("phi3", build_family_tokenizer("phi3"))
    with pytest.raises(UserError) as raised:
        apply_method(model, cfg)
    assert "q_proj" in raised.value.message
    assert "down_proj, gate_up_proj, o_proj, qkv_proj" in raised.value.fix and "lm_head" not in raised.value.fix


def test_llama3_rope_is_recovered_from_the_gguf_rope_freqs():
    """A Llama 3.1-shaped rope (factor 8, low 1, high 4, 8192, head 128): llama.cpp's rope_freqs divisors
    give back Llama 3 parameters whose frequencies are the original ones (transformers' loader drops them)."""
    import numpy as np
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tunewright.gguf_config import _repair_llama3_rope

    shape = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 131072}
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    original = LlamaConfig(**shape, rope_parameters=rope)
    plain = LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](original, "cpu")
    unscaled = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    _repair_llama3_rope(plain, (unscaled / scaled.double()).numpy())  # what convert_hf_to_gguf writes
    assert plain.rope_parameters["rope_type"] == "llama3"
    assert plain.rope_parameters["low_freq_factor"] == pytest.approx(1.0) and plain.rope_parameters["high_freq_factor"] == pytest.approx(4.0)
    repaired, _ = ROPE_INIT_FUNCTIONS["llama3"](plain, "cpu")
    np.testing.assert_allclose(repaired.numpy(), scaled.numpy(), rtol=1e-5)


ROPE_SCALINGS = {  # family: (rope_parameters to set, other config fields)
    "smollm2": ({"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0}, {}),
    "qwen2": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "rope_theta": 1e6}, {}),
    "gemma3": ({"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}, {}),
    "phi3": ({"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)], "rope_theta": 10000.0,
              "long_factor": [2.0 + 0.3 * i for i in range(8)], "original_max_position_embeddings": 256,
              "partial_rotary_factor": 1.0},
             {"original_max_position_embeddings": 256}),
}


@pytest.mark.parametrize("family", sorted(ROPE_SCALINGS))
def test_rope_scaling_survives_training_from_gguf(family, tmp_path):
    """transformers' GGUF loader reads no rope.scaling keys (nor Phi-3's long/short factor tensors): the base
    tunewright trains from a .gguf must still be the exported model, before and after the original context."""
    from families import build_family_model, build_family_tokenizer
    from transformers import AutoModelForCausalLM

    from tunewright.export import export
    from tunewright.models import local_model_dir

    tokenizer = build_family_tokenizer(family)
    config = build_family_model(family, tokenizer).config
    rope, fields = ROPE_SCALINGS[family]
    config.rope_parameters = rope
    for name, value in fields.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    gguf = export(str(tmp_path / "hf"), fmt="gguf", quant="f32", output=str(tmp_path / "m.gguf"))
    loaded = AutoModelForCausalLM.from_pretrained(local_model_dir(str(gguf)), dtype=torch.float32).eval()
    ids = torch.randint(5, len(tokenizer) - 20, (1, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=TOLERANCE, rtol=TOLERANCE)


def test_a_base_dequantized_before_the_config_repairs_is_made_again(tmp_path):
    """A folder cached by an older tunewright (Gemma 2 with transformers' query_pre_attn_scalar=256) must not
    be trained from again: the cache records how it was made, and an older folder is rebuilt."""
    from families import save_family

    from tunewright.export import export
    from tunewright.models import local_model_dir

    gguf = export(str(save_family(tmp_path, "gemma2")), fmt="gguf", quant="f32", output=str(tmp_path / "g.gguf"))
    cached = Path(local_model_dir(str(gguf)))
    config = json.loads((cached / "config.json").read_text())
    assert config["query_pre_attn_scalar"] == 16
    (cached / "config.json").write_text(json.dumps(config | {"query_pre_attn_scalar": 256}))
    (cached / "tunewright_source.json").write_text(json.dumps({"gguf": str(gguf)}))  # what older versions wrote
    again = Path(local_model_dir(str(gguf)))
    assert json.loads((again / "config.json").read_text())["query_pre_attn_scalar"] == 16


def test_estimate_of_a_qwen3_gguf_counts_the_model_in_the_file(tmp_path, capsys):
    """`estimate --model file.gguf` reads the same repaired config as training (Qwen3's head_dim is not 128)."""
    from families import save_family
    from transformers import AutoModelForCausalLM

    from tunewright.export import export
    from tunewright.train.estimate import estimate

    folder = save_family(tmp_path, "qwen3")
    gguf = export(str(folder), fmt="gguf", quant="f32", output=str(tmp_path / "q.gguf"))
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())
    assert estimate(str(gguf), method="lora")["parameters"] == real
