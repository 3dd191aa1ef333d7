"""Which models the server answers for, and the weights behind them.

Every served id maps to a *group* (one set of base weights in memory) plus, for adapters, a PEFT
adapter name inside that group: ten adapters trained on SmolLM2 cost one SmolLM2 plus ten small
adapters. LoRA adapters of one group (and its bare base) share forward passes through PEFT's
mixed-adapter batches; PEFT cannot mix DoRA adapters, so each DoRA adapter is batched on its own.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data.templates import end_of_turn_ids
from ..errors import UserError

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class ModelGroup:
    """One copy of base weights in memory and the adapters loaded on top of it."""

    key: str  # the local folder the base weights came from
    model: object  # a transformers model, or a PeftModel once an adapter is loaded
    device: str
    context_length: int
    vocab_size: int  # ids that may be sampled
    adapters: dict[str, str] = field(default_factory=dict)  # PEFT adapter name -> adapter folder
    dora_adapters: set[str] = field(default_factory=set)

    @property
    def is_peft(self) -> bool:
        return bool(self.adapters)


@dataclass
class ServedModel:
    """One model id the API answers for."""

    id: str
    group: ModelGroup
    adapter: str | None  # PEFT adapter name; BASE_ADAPTER for the bare base of a PEFT group; None if no adapters
    tokenizer: object
    stop_ids: frozenset[int]
    spec: str  # what was asked for: a run folder or a model spec
    base: str | None
    created: int = field(default_factory=lambda: int(time.time()))
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def context_length(self) -> int:
        return self.group.context_length

    @property
    def batch_key(self) -> tuple[str, str | None]:
        """Requests with equal keys can be decoded in one batch: (group, None) mixes, (group, adapter) does not."""
        if self.adapter in self.group.dora_adapters:
            return (self.group.key, self.adapter)
        return (self.group.key, None)


def pick_device() -> tuple[str, object]:
    """CUDA in bf16 when present, otherwise CPU in fp32 (CPU half precision is slow and lossy)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def context_length_of(model, tokenizer) -> int:
    """The longest prompt + answer the model handles: its position limit, or the tokenizer's if smaller."""
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return int(limit)


class Registry:
    """Served ids -> models; loads run folders, adapter folders and model specs, sharing bases."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.groups: dict[str, ModelGroup] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str) -> ServedModel | None:
        return self.models.get(model_id)

    def ids(self) -> list[str]:
        return list(self.models)

    def add(self, spec: str, model_id: str | None = None) -> ServedModel:
        """Load `spec` (run folder, adapter folder or model spec) and serve it as `model_id`."""
        from ..models import describe_run, load_tokenizer

        run = describe_run(spec)
        model_id = model_id or (Path(spec).name if run else spec)
        with self._lock:
            if model_id in self.models:
                raise UserError(f"two served models would both have the id '{model_id}'",
                                "serve runs whose folder names differ (rename one folder)")
            if run and "adapter" in run:
                if not run.get("base"):
                    raise UserError(f"'{spec}': cannot tell which base model the adapter belongs to",
                                    "add `model: <base>` to the run's config.yaml")
                group = self._group_for(run["base"])
                adapter = self._load_adapter(group, run["adapter"])
                tok_dir = run["adapter"] if (Path(run["adapter"]) / "tokenizer_config.json").is_file() else group.key
                served = self._served(model_id, group, adapter, load_tokenizer(tok_dir), spec, run["base"])
            else:
                group = self._group_for(spec if not run else run["model"])
                adapter = BASE_ADAPTER if group.is_peft else None
                served = self._served(model_id, group, adapter, load_tokenizer(group.key), spec, (run or {}).get("base"))
            self.models[model_id] = served
            return served

    def _served(self, model_id, group, adapter, tokenizer, spec, base) -> ServedModel:
        return ServedModel(model_id, group, adapter, tokenizer, frozenset(end_of_turn_ids(tokenizer)), spec, base)

    def _group_for(self, spec: str) -> ModelGroup:
        """The group holding these base weights, loading them the first time."""
        from ..models import load_model, load_tokenizer, local_model_dir

        key = str(Path(local_model_dir(spec)).resolve())
        if key not in self.groups:
            device, dtype = pick_device()
            model = load_model(key, dtype=dtype)
            model.to(device)
            model.eval()
            tokenizer = load_tokenizer(key)
            # never sample an id the tokenizer cannot decode (embeddings are often padded past the vocabulary)
            vocab = min(model.get_output_embeddings().weight.shape[0], len(tokenizer))
            self.groups[key] = ModelGroup(key, model, device, context_length_of(model, tokenizer), vocab)
        return self.groups[key]

    def _load_adapter(self, group: ModelGroup, adapter_dir: str) -> str:
        """Load an adapter into the group's model under a fresh PEFT name (ids may hold dots PEFT refuses)."""
        import json

        from peft import PeftModel

        name = f"adapter_{len(group.adapters)}"
        cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise UserError(f"'{adapter_dir}': only LoRA/DoRA adapters can be served, this one is {cfg.get('peft_type')}",
                            "merge it first (tunewright merge) and serve the merged folder")
        if not group.is_peft:
            group.model = PeftModel.from_pretrained(group.model, adapter_dir, adapter_name=name)
            for served in self.models.values():  # plain ids on this base now mean "adapters off"
                if served.group is group:
                    served.adapter = BASE_ADAPTER
        else:
            group.model.load_adapter(adapter_dir, adapter_name=name)
        group.model.to(group.device)
        group.model.eval()
        group.adapters[name] = adapter_dir
        if cfg.get("use_dora"):
            group.dora_adapters.add(name)
        return name
