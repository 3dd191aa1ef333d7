"""`train.distributed` and the `fsdp:` / `deepspeed:` sections: how they map onto Accelerate's plugins.

DeepSpeed is not installed here (and its CPU path is not what users run): its mapping is checked as
data and through Accelerate's DeepSpeedPlugin; a real ZeRO-2/3 step is in benchmarks/gpu_check.py.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from helpers import write_jsonl

from tunewright.config import load_config
from tunewright.errors import UserError
from tunewright.train import distributed

NO_DEEPSPEED = importlib.util.find_spec("deepspeed") is None


def test_deepspeed_stage_2_without_offload(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    ds = distributed.deepspeed_config(load_config(overrides=["deepspeed.stage=2", "train.max_grad_norm=0.5"]))
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}
    assert ds["gradient_clipping"] == 0.5
    # the loop forms batches: DeepSpeed sees one micro-batch per backward on each of the 4 processes
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (1, 1, 4)
    assert ds["zero_force_ds_cpu_optimizer"] is False  # the loop's torch AdamW is kept


def test_deepspeed_stage_3_offloads_optimizer_and_weights_to_cpu_and_saves_16bit_weights():
    zero = distributed.deepspeed_config(load_config(overrides=["deepspeed.stage=3", "deepspeed.offload=cpu"]))["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    stage2 = distributed.deepspeed_config(load_config(overrides=["deepspeed.stage=2", "deepspeed.offload=cpu"]))["zero_optimization"]
    assert "offload_param" not in stage2 and stage2["offload_optimizer"]["device"] == "cpu"  # stage 2 keeps whole weights


def test_accelerate_reads_the_deepspeed_config_as_given():
    plugin = DeepSpeedPlugin(hf_ds_config=distributed.deepspeed_config(load_config(overrides=["deepspeed.stage=3", "deepspeed.offload=cpu"])))
    assert plugin.zero_stage == 3
    assert plugin.offload_optimizer_device == "cpu" and plugin.offload_param_device == "cpu"


def test_bad_deepspeed_values_are_config_errors():
    with pytest.raises(UserError, match="deepspeed.stage"):
        load_config(overrides=["deepspeed.stage=1"])
    with pytest.raises(UserError, match="train.distributed"):
        load_config(overrides=["train.distributed=zero"])


def test_fsdp_section_maps_onto_accelerates_fsdp2_plugin():
    kwargs = distributed.fsdp_plugin_kwargs(load_config(overrides=["fsdp.reshard_after_forward=false"]), ["LlamaDecoderLayer"])
    assert kwargs["fsdp_version"] == 2 and kwargs["reshard_after_forward"] is False
    assert kwargs["auto_wrap_policy"] == "transformer_based_wrap" and kwargs["transformer_cls_names_to_wrap"] == ["LlamaDecoderLayer"]
    assert kwargs["state_dict_type"] == "FULL_STATE_DICT"
    plugin = FullyShardedDataParallelPlugin(**kwargs)
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    by_size = distributed.fsdp_plugin_kwargs(load_config(overrides=["fsdp.wrap=size", "fsdp.min_num_params=1000"]))
    assert (by_size["auto_wrap_policy"], by_size["min_num_params"]) == ("size_based_wrap", 1000)
    assert FullyShardedDataParallelPlugin(**by_size).min_num_params == 1000


def test_fsdp_wraps_the_architectures_decoder_blocks(tiny_model_dir):
    assert distributed.block_classes(str(tiny_model_dir)) == ["LlamaDecoderLayer"]


def test_auto_is_ddp_for_adapters_and_fsdp_for_a_full_model_too_big_for_one_device(tiny_model_dir, monkeypatch):
    def resolved(method: str, memory: int) -> str:
        cfg = load_config(model=str(tiny_model_dir), method=method)
        return distributed.resolve_strategy(cfg, str(tiny_model_dir), device_memory=memory).train.distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolved("lora", 1) == "ddp"
    assert resolved("full", 1) == "fsdp"  # 1 byte per device: nothing fits
    assert resolved("full", 10**12) == "ddp"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolved("full", 1) == "ddp"  # one process: nothing to shard over
    explicit = load_config(model=str(tiny_model_dir), method="full", overrides=["train.distributed=fsdp"])
    assert distributed.resolve_strategy(explicit, str(tiny_model_dir), device_memory=10**12).train.distributed == "fsdp"


def test_optimizer_state_keyed_by_name_round_trips_to_torch_numbering():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    names = distributed.trainable_names(model)
    by_name = distributed.optimizer_state_by_name(opt.state_dict(), names)
    assert by_name["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    back = distributed.optimizer_state_by_index(by_name, names)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    for i, state in opt.state_dict()["state"].items():
        assert torch.equal(back["state"][i]["exp_avg"], state["exp_avg"])


@pytest.mark.skipif(not NO_DEEPSPEED, reason="deepspeed is installed here: the missing-package message cannot show")
def test_deepspeed_missing_is_one_clear_error_saying_how_to_install(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    run = subprocess.run([sys.executable, "-m", "tunewright.cli", "train", "--model", str(tiny_model_dir), "--data", str(data),
                          "--output", str(tmp_path / "run"), "--set", "train.distributed=deepspeed"],
                         check=False, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "deepspeed package is not installed" in run.stderr and "pip install" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()


def test_early_stopping_with_fsdp_auto_is_off_and_a_number_is_refused_with_a_fix(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")

    def resolve(patience: str):
        cfg = load_config(model=str(tiny_model_dir), method="full", overrides=["train.distributed=fsdp", f"train.early_stopping_patience={patience}"])
        return distributed.resolve_strategy(cfg, str(tiny_model_dir))

    assert resolve("auto").train.early_stopping_patience is None
    with pytest.raises(UserError, match="early_stopping_patience=2"):
        resolve("2")
