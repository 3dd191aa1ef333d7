"""Baseline: stock `transformers.Trainer` + PEFT LoRA (r16, alpha 32, all-linear), padding to the longest, fp32 or bf16.

This is how most users fine-tune with LoRA: a tokenized dataset with -100 labels on the prompt,
`DataCollatorForSeq2Seq` padding each batch to its longest example, and the model's own loss over
full logits; `--precision bf16` is Trainer's `bf16=True` (autocast over fp32 weights, as users
switch it on). Run it in its own process; it writes one result JSON (see _common.write_result).

What GPU users add (benchmarks/gpu_bench.py runs them): `--base-dtype bf16` (the frozen base stored in bf16),
`--liger` (Trainer's `use_liger_kernel`: Liger's fused kernels and linear cross-entropy), `--attn
flash_attention_2 --padding-free` (flash-attention varlen over a flattened batch: `DataCollatorWithFlattening`).

    python benchmarks/trainer_peft.py --steps 20 --out benchmarks/out/trainer_peft.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: TrainingArguments(bf16=True)")
    parser.add_argument("--base-dtype", choices=["fp32", "bf16"], default="fp32", help="dtype the base model is loaded in")
    parser.add_argument("--attn", default=None, help="attn_implementation (sdpa, flash_attention_2, ...; default: the model's)")
    parser.add_argument("--padding-free", action="store_true", help="flatten each batch into one row (no padding)")
    parser.add_argument("--liger", action="store_true", help="TrainingArguments(use_liger_kernel=True)")
    args = parser.parse_args(argv)
    _common.quiet()
    _common.setup_threads(args.threads)
    from datasets import Dataset
    from transformers import (
        DataCollatorForSeq2Seq,
        DataCollatorWithFlattening,
        Trainer,
        TrainingArguments,
    )

    model_dir, tokenizer, train, validation = _common.load_examples(args.model, args.data, args.validation, args.max_len)
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in train])
    model = _common.load_lora_model(model_dir, dtype=torch.bfloat16 if args.base_dtype == "bf16" else torch.float32,
                                    attn_implementation=args.attn)
    collator = _common.BatchCounter(
        DataCollatorWithFlattening(return_flash_attn_kwargs=args.attn == "flash_attention_2") if args.padding_free else
        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=_common.IGNORE_INDEX, return_tensors="pt"),
        tokenizer.pad_token_id)
    timer = _common.step_timer(args.max_seconds)
    training_args = TrainingArguments(
        **_common.shared_training_args(args, str(Path(args.out).parent / "trainer_peft_run")),
        bf16=args.precision == "bf16",
        use_liger_kernel=args.liger,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.train()
    peak = _common.peak_memory_bytes()
    extra = {"precision": args.precision, "base_dtype": args.base_dtype, "attn": model.config._attn_implementation,
             "liger": args.liger, "packing": args.padding_free, "micro_batch": args.micro_batch, "max_len": args.max_len,
             "grad_accum": args.grad_accum, "lengths": _common.attention_length_stats(train)}
    ga = args.grad_accum
    _common.write_result(args.out, "trainer_peft", timer, collator, None, extra, peak, ga)  # the timing survives a killed evaluation
    val_loss = _common.token_weighted_loss(model, validation, _common.per_device_batch(args), tokenizer.pad_token_id)
    return _common.write_result(args.out, "trainer_peft", timer, collator, val_loss, extra, peak, ga)


if __name__ == "__main__":
    main()
