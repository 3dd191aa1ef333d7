"""Baseline: TRL `DPOTrainer`, sigmoid DPO, LoRA r16 all-linear (a new adapter: the reference is the adapter
disabled, as in tunewright), fp32, TRL's default padded batches (chosen and rejected rows padded to the longest).

The pairs are tunewright's tokens (`prepare_data` with `objective: dpo`: the chat template, the shared prompt,
each answer up to its end-of-turn token), given to TRL as its tokenized columns, so both tools train the very
same tokens. Needs `pip install trl` (the `bench` extra; `make bench` builds `.venv-bench`).

    .venv-bench/bin/python benchmarks/trl_dpo.py --steps 5 --out benchmarks/out/dpo/trl.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common


class PairBatchCounter:
    """Wraps TRL's preference collator; records real / padded / trained tokens of each batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.batches: list[dict] = []

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch["completion_mask"]
        self.batches.append({"real": int(batch["attention_mask"].sum()), "padded": int(batch["input_ids"].numel()),
                             "trained": int(mask[:, 1:].sum())})
        return batch


def load_pairs(model: str, data: str, max_len: int):
    """(model folder, tokenizer, rows in TRL's tokenized columns) exactly as `tunewright train` tokenizes them."""
    from tunewright.config import load_config
    from tunewright.data import prepare_data
    from tunewright.data.pairs import first_label
    from tunewright.models import ensure_pad_token, load_tokenizer, local_model_dir

    model_dir = local_model_dir(model)
    tokenizer = load_tokenizer(model_dir)
    ensure_pad_token(tokenizer)
    cfg = load_config(model=model, overrides=[f"data.train={data}", f"data.max_seq_len={max_len}", "objective=dpo"])
    rows = []
    for pair in prepare_data(cfg, tokenizer).train:
        n = first_label(pair.chosen)
        rows.append({"prompt_ids": pair.chosen.input_ids[:n], "chosen_ids": pair.chosen.input_ids[n:_end(pair.chosen)],
                     "rejected_ids": pair.rejected.input_ids[n:_end(pair.rejected)]})
    return model_dir, tokenizer, rows


def _end(example) -> int:
    return max(i for i, label in enumerate(example.labels) if label != _common.IGNORE_INDEX) + 1


def main(argv: list[str] | None = None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--beta", type=float, default=0.1)
    parser.set_defaults(data="examples/stdlib-qa-pairs/train.jsonl", lr=5e-5)
    args = parser.parse_args(argv)
    _common.quiet()
    _common.setup_threads(args.threads)
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already tokenized by tunewright's data layer

    model_dir, tokenizer, rows = load_pairs(args.model, args.data, args.max_len)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    timer = _common.step_timer(args.max_seconds)
    config = DPOConfig(**_common.shared_training_args(args, str(Path(args.out).parent / "trl_run")),
                       beta=args.beta, loss_type=["sigmoid"], max_length=args.max_len, bf16=False, fp16=False,
                       disable_dropout=False)  # keep LoRA dropout 0.05, as tunewright trains it
    trainer = PretokenizedDPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                     processing_class=tokenizer, peft_config=lora, callbacks=[timer])
    counter = PairBatchCounter(trainer.data_collator)
    trainer.data_collator = counter
    trainer.train()
    peak = _common.peak_memory_bytes()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    extra = {"precision": "fp32", "pairs_per_step": args.micro_batch, "max_len": args.max_len, "beta": args.beta,
             "first_train_loss": losses[0] if losses else None}
    return _common.write_result(args.out, "trl_dpo", timer, counter, None, extra, peak)


if __name__ == "__main__":
    main()
