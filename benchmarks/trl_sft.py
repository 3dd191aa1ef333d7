"""Baseline: TRL `SFTTrainer`, completion-only loss, LoRA r16 all-linear, fp32; `--packing` or `--no-packing`.

The dataset is pre-tokenized (`input_ids` + `completion_mask` from the same masks tunewright
trains), so TRL builds its labels from exactly the same trained tokens. With `--packing` TRL packs
examples into rows of `--max-len` (best-fit decreasing) and trains padding-free: the rows of a
micro-batch are flattened into one sequence with restarted position ids. Needs `pip install trl`
(the `bench` extra).

    python benchmarks/trl_sft.py --packing --steps 5 --out benchmarks/out/trl_packing.json
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--packing", action=__import__("argparse").BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    _common.quiet()
    _common.setup_threads(args.threads)
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model_dir, tokenizer, train, validation = _common.load_examples(args.model, args.data, args.validation, args.max_len)
    rows = [{"input_ids": e.input_ids, "completion_mask": [int(x != _common.IGNORE_INDEX) for x in e.labels]} for e in train]
    dataset = Dataset.from_list(rows)
    model = _common.load_lora_model(model_dir)
    timer = _common.step_timer(args.max_seconds)
    tool = "trl_packing" if args.packing else "trl_no_packing"
    config = SFTConfig(
        **_common.shared_training_args(args, str(Path(args.out).parent / f"{tool}_run")),
        max_length=args.max_len,
        packing=args.packing,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    counter = _common.BatchCounter(trainer.data_collator, tokenizer.pad_token_id)
    trainer.data_collator = counter
    trainer.train()
    peak = _common.peak_memory_bytes()
    extra = {"precision": "fp32", "packing": args.packing, "micro_batch": args.micro_batch, "max_len": args.max_len,
             "lengths": _common.attention_length_stats(train)}
    _common.write_result(args.out, tool, timer, counter, None, extra, peak)  # the timing survives a killed evaluation
    val_loss = _common.token_weighted_loss(model, validation, 8, tokenizer.pad_token_id)
    return _common.write_result(args.out, tool, timer, counter, val_loss, extra, peak)


if __name__ == "__main__":
    main()
