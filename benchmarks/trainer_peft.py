"""Baseline: stock `transformers.Trainer` + PEFT LoRA (r16, alpha 32, all-linear), padding to the longest, fp32 or bf16.

This is how most users fine-tune with LoRA: a tokenized dataset with -100 labels on the prompt,
`DataCollatorForSeq2Seq` padding each batch to its longest example, and the model's own loss over
full logits; `--precision bf16` is Trainer's `bf16=True` (autocast over fp32 weights, as users
switch it on). Run it in its own process; it writes one result JSON (see _common.write_result).

    python benchmarks/trainer_peft.py --steps 20 --out benchmarks/out/trainer_peft.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: TrainingArguments(bf16=True)")
    args = parser.parse_args(argv)
    _common.quiet()
    _common.setup_threads(args.threads)
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model_dir, tokenizer, train, validation = _common.load_examples(args.model, args.data, args.validation, args.max_len)
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in train])
    model = _common.load_lora_model(model_dir)
    collator = _common.BatchCounter(
        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=_common.IGNORE_INDEX, return_tensors="pt"),
        tokenizer.pad_token_id)
    timer = _common.step_timer(args.max_seconds)
    training_args = TrainingArguments(
        **_common.shared_training_args(args, str(Path(args.out).parent / "trainer_peft_run")),
        bf16=args.precision == "bf16",
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.train()
    peak = _common.peak_memory_bytes()
    extra = {"precision": args.precision, "packing": False, "micro_batch": args.micro_batch, "max_len": args.max_len,
             "lengths": _common.attention_length_stats(train)}
    _common.write_result(args.out, "trainer_peft", timer, collator, None, extra, peak)  # the timing survives a killed evaluation
    val_loss = _common.token_weighted_loss(model, validation, args.micro_batch, tokenizer.pad_token_id)
    return _common.write_result(args.out, "trainer_peft", timer, collator, val_loss, extra, peak)


if __name__ == "__main__":
    main()
