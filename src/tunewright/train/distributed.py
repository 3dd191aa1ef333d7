"""How several processes share one run: DDP, FSDP2 or DeepSpeed ZeRO, all through Hugging Face Accelerate.

`train.distributed` picks the strategy; `auto` is DDP for adapters and for full models whose
`estimate` fits one device, FSDP otherwise. The `fsdp:` and `deepspeed:` config sections map onto
Accelerate's FullyShardedDataParallelPlugin (FSDP2) and DeepSpeedPlugin; nothing here is a
distributed engine of its own.

A sharded model is gathered whenever it leaves the processes: checkpoints hold full tensors (weights
and the optimizer state keyed by parameter name), so a run resumes on any number of processes, and
`model/` / `adapter/` are the plain folders stock Transformers / PEFT load.

Accelerate 1.15 applies its FSDP plugin only to accelerator devices (CUDA, XPU, NPU...): on CPU
processes (gloo) it silently falls back to DDP. `route_fsdp_on_cpu` sets the distributed type to
FSDP there, so the tests' two CPU processes run the same Accelerate FSDP2 code a GPU run does
(torch's `fully_shard` supports CPU meshes on gloo).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..errors import UserError
from .methods import is_adapter_method

GB = 1024**3


def world_size() -> int:
    """Processes in this run, as torchrun / accelerate launch set them (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# --- which strategy ------------------------------------------------------------------------------------------------


def resolve_strategy(cfg: RunConfig, model_dir: str, device_memory: int | None = None) -> RunConfig:
    """`train.distributed: auto` becomes ddp or fsdp (what config.yaml records); other values stay."""
    strategy = cfg.train.distributed
    if strategy == "auto":
        sharded = sharding_depends_on_size(cfg) and not fits_one_device(cfg, model_dir, device_memory)
        strategy = "fsdp" if sharded else "ddp"
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"distributed": strategy, **_early_stopping(cfg, strategy)})})


def sharding_depends_on_size(cfg: RunConfig) -> bool:
    """Only a multi-process full (or freeze) run may need FSDP; adapters and one process always get DDP."""
    return not is_adapter_method(cfg.method) and world_size() > 1


def _early_stopping(cfg: RunConfig, strategy: str) -> dict:
    """Early stopping keeps and restores whole best weights, not written for FSDP shards yet: auto is off, a number refused."""
    patience = cfg.train.early_stopping_patience
    if strategy != "fsdp" or world_size() == 1 or not patience:
        return {}
    if patience == "auto":
        return {"early_stopping_patience": None}
    raise UserError(f"train.early_stopping_patience={patience} is not supported with train.distributed=fsdp yet",
                    "set train.early_stopping_patience: null (metrics.jsonl's eval_loss names the best checkpoint), or train with ddp")


def fits_one_device(cfg: RunConfig, model_dir: str, device_memory: int | None = None) -> bool:
    """Whether `estimate`'s bytes for this model and method fit one device (read from config.json only)."""
    from .estimate import estimate_bytes, model_config, parameter_counts

    config = model_config(model_dir, cfg.trust_remote_code)
    text = getattr(config, "text_config", None) or config
    precision_bytes = 4 if cfg.train.precision == "fp32" else 2
    need = estimate_bytes(parameter_counts(config, cfg), text.hidden_size, getattr(text, "num_hidden_layers", 1), cfg.method,
                          cfg.data.max_seq_len, 1, precision_bytes, cfg.train.gradient_checkpointing)["total"]
    return need <= (device_memory if device_memory is not None else one_device_memory())


def one_device_memory() -> int:
    """Bytes of one training device: the first GPU's memory, or the machine's RAM on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    import psutil

    return psutil.virtual_memory().total


# --- the Accelerate plugins ----------------------------------------------------------------------------------------


def fsdp_plugin_kwargs(cfg: RunConfig, wrap_classes: list[str] | None = None) -> dict:
    """The `fsdp:` section as FullyShardedDataParallelPlugin arguments (FSDP2, full state dicts)."""
    f = cfg.fsdp
    kwargs = {
        "fsdp_version": 2,
        "reshard_after_forward": f.reshard_after_forward,
        "cpu_offload": f.cpu_offload,
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": False,  # every process loads the weights; sharding happens in prepare
        "activation_checkpointing": False,  # train.gradient_checkpointing already does this, inside the model
    }
    if f.wrap == "size":
        kwargs.update(auto_wrap_policy="size_based_wrap", min_num_params=f.min_num_params)
    else:
        kwargs.update(auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=wrap_classes or None)
    return kwargs


def deepspeed_config(cfg: RunConfig) -> dict:
    """The `deepspeed:` section as a DeepSpeed config dict.

    The loop forms batches and accumulates gradients itself, so DeepSpeed sees one micro-batch per
    backward and a boundary only at a step's last micro-batch (see `micro_batch_sync`); its batch
    sizes are bookkeeping. A torch optimizer is kept under CPU offload (zero_force_ds_cpu_optimizer off).
    """
    d = cfg.deepspeed
    zero: dict = {"stage": d.stage, "overlap_comm": True, "contiguous_gradients": True}
    if d.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if d.stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if d.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size(),
        "gradient_clipping": cfg.train.max_grad_norm,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def refuse_deepspeed_resume(cfg: RunConfig) -> None:
    """ZeRO keeps each process's slice of the optimizer state; checkpoints hold the main process's only."""
    if cfg.train.distributed == "deepspeed" and world_size() > 1:
        raise UserError("--resume of a train.distributed=deepspeed run is not supported: its checkpoints hold the "
                        "weights but only one process's slice of the ZeRO optimizer state",
                        "use train.distributed=fsdp for sharded runs that resume (on any number of processes)")


def require_deepspeed() -> None:
    """DeepSpeed is an optional extra: one clear error when it is missing or cannot run here."""
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError("train.distributed=deepspeed: the deepspeed package is not installed",
                        "pip install 'tunewright[deepspeed]' (or pip install deepspeed) on every node, or use train.distributed=fsdp")
    if not torch.cuda.is_available():
        raise UserError("train.distributed=deepspeed needs CUDA GPUs (DeepSpeed's CPU path is not supported here)",
                        "use train.distributed=fsdp or ddp on CPU")


def accelerator_kwargs(cfg: RunConfig, model_dir: str) -> dict:
    """The plugin Accelerator(...) takes for `train.distributed`; nothing for DDP or a single process."""
    strategy = cfg.train.distributed
    if strategy == "deepspeed":
        require_deepspeed()
    if strategy == "deepspeed":  # even on one GPU: ZeRO's CPU offload helps there too
        from accelerate.utils import DeepSpeedPlugin

        return {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg))}
    if world_size() == 1 or strategy != "fsdp":
        return {}
    from accelerate.utils import FullyShardedDataParallelPlugin

    return {"fsdp_plugin": FullyShardedDataParallelPlugin(**fsdp_plugin_kwargs(cfg, block_classes(model_dir, cfg.trust_remote_code)))}


def block_classes(model_dir: str, trust_remote_code: bool = False) -> list[str]:
    """The decoder block class names FSDP wraps one by one (the architecture's `_no_split_modules`)."""
    import transformers

    from .estimate import model_config

    config = model_config(model_dir, trust_remote_code)
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None and getattr(cls, "_no_split_modules", None):
            return list(cls._no_split_modules)
    return []


def route_fsdp_on_cpu(accelerator, plugin) -> None:
    """Make Accelerate shard on CPU processes too (it applies its FSDP plugin only on accelerator devices)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # both shared states: every AcceleratorState() copies PartialState's values over its own
        PartialState().distributed_type = DistributedType.FSDP
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin


@contextlib.contextmanager
def micro_batch_sync(accelerator, module, last: bool):
    """Exchange gradients (and let DeepSpeed step) only after a step's last micro-batch."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(last)  # DeepSpeed's engine steps on a sync boundary
        yield
        return
    with contextlib.nullcontext() if last else accelerator.no_sync(module):
        yield


def describe(accelerator) -> dict:
    """What the run really used (summary.json): Accelerate's strategy and the number of processes."""
    kind = accelerator.distributed_type.value.lower()
    strategy = {"fsdp": "fsdp", "deepspeed": "deepspeed", "no": "none"}.get(kind, "ddp")
    return {"strategy": strategy, "processes": accelerator.num_processes}


# --- gathering a sharded model -------------------------------------------------------------------------------------


def is_sharded(model) -> bool:
    """True when the parameters are FSDP2 shards (DTensors): gathering needs every process."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@dataclass
class Gathered:
    """Full tensors of a sharded model, held by the main process (empty on the others)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict | None = None


def _full_options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def is_zero3(model) -> bool:
    """True when DeepSpeed ZeRO-3 partitioned the parameters (each holds only its `ds_tensor` slice)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def gather_zero3(model, trainable_only: bool = False) -> Gathered:
    """ZeRO-3 weights gathered one parameter at a time (never the whole model on one device)."""
    import deepspeed

    main = int(os.environ.get("RANK", "0")) == 0
    weights = {}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if main:
                weights[name] = p.detach().to("cpu", copy=True)
    if not trainable_only and main:
        weights.update({n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers()})
    return Gathered(weights)


def gather_model(model, trainable_only: bool = False) -> Gathered | None:
    """The model's full weights on the main process; None when not sharded. Every process must call it."""
    if is_zero3(model):
        return gather_zero3(model, trainable_only)
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = get_model_state_dict(model, options=_full_options())
    # named_parameters lists a tied weight once (the embedding): so does save_pretrained of a plain model
    names = {n for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
    if not trainable_only:
        names |= {n for n, _ in model.named_buffers()}
    return Gathered({k: v for k, v in weights.items() if k in names})


def gather_state(model, optimizer) -> Gathered | None:
    """Trainable weights and the optimizer state (keyed by parameter name), full, for a checkpoint."""
    gathered = gather_model(model, trainable_only=True)
    if gathered is None or is_zero3(model):  # ZeRO: the main process's optimizer slice (see refuse_deepspeed_resume)
        if gathered is not None:
            gathered.optimizer = _inner(optimizer).state_dict()
        return gathered
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    gathered.optimizer = get_optimizer_state_dict(model, _inner(optimizer), options=_full_options())
    return gathered


def load_gathered(model, optimizer, weights: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """Put full tensors (read by every process from the checkpoint) into a sharded model and optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, _inner(optimizer), optimizer_state, options=options)


def trainable_names(model) -> list[str]:
    """Trainable parameter names in the optimizer's order (the loop builds it from model.parameters())."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def optimizer_state_by_name(state: dict, names: list[str]) -> dict:
    """torch's optimizer.state_dict() (parameters numbered) keyed by parameter name instead."""
    if not state.get("param_groups") or isinstance(state["param_groups"][0]["params"][0], str):
        return state
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def optimizer_state_by_index(state: dict, names: list[str]) -> dict:
    """A name-keyed optimizer state (a sharded run's checkpoint) numbered for optimizer.load_state_dict."""
    if not state.get("param_groups") or not isinstance(state["param_groups"][0]["params"][0], str):
        return state
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps torch's
