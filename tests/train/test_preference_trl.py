"""Cross-check against TRL's `DPOTrainer`: on the same tiny model, adapter and pairs, its step-0 loss, rewards
and log-probs equal ours.

Needs `trl` (not in the main venv: `make bench` installs it into `.venv-bench`), so run it there (with pytest
added to that venv once: `.venv-bench/bin/python -m pip install pytest`):

    .venv-bench/bin/python -m pytest -q tests/train/test_preference_trl.py

Measured with trl 1.16.0 (tiny 2-layer Llama, 8 pairs, fp32): the step-0 losses agree to 1.2e-7 (sigmoid,
0.72847) and 3.8e-6 (IPO, 25.4469: 1.5e-7 relative), the rewards to 3.3e-7, the log-probs to print precision.

The LoRA adapter starts non-zero (`init_lora_weights=False`), so the policy differs from the reference (the
same model with the adapter disabled, in both tools) and the rewards are not all zero. TRL is given our data
layer's tokens (prompt, then each answer up to its end-of-turn token) so both score the very same tokens; a
separate test checks TRL's own tokenization of the rows renders the same prompt and answer tokens.
"""
from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed here (make bench installs it into .venv-bench; run "
                                        ".venv-bench/bin/python -m pytest tests/train/test_preference_trl.py)")

from helpers import write_jsonl

from tunewright.config import load_config
from tunewright.data import prepare_data
from tunewright.data.pairs import first_label
from tunewright.models import ensure_pad_token, load_model, load_tokenizer
from tunewright.train.objectives import PreferenceObjective
from tunewright.train.preference_loss import PairLogps

BETA = 0.1
WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]


def _rows() -> list[dict]:
    """Eight TRL conversational pairs (explicit prompt), answers of different lengths."""
    rows = []
    for i, w in enumerate(WORDS):
        other = WORDS[(i + 3) % 8]
        rows.append({"prompt": [{"role": "user", "content": f"Repeat the word {w}." + " please" * (i % 3)}],
                     "chosen": [{"role": "assistant", "content": f"{w} {w} {w}"}],
                     "rejected": [{"role": "assistant", "content": f"{other}." + " no" * (i % 4)}]})
    return rows


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    data = write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", _rows())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ensure_pad_token(tokenizer)
    return tiny_model_dir, data, tokenizer


def _config(model_dir, data, loss: str):
    return load_config(model=str(model_dir), data__train=str(data),
                       overrides=["objective=dpo", f"preference.loss={loss}", f"preference.beta={BETA}",
                                  "train.micro_batch_tokens=4096", "train.precision=fp32",
                                  "preference.shared_prompt=true"])  # resolved as the loop gets it, not "auto"


def _base_and_lora(model_dir):
    """The tiny base model and a LoRA config whose B matrices start random (not zero): policy != reference.

    TRL gets the base and the config (it wraps the model itself, its reference is then the adapter disabled; a
    model already wrapped would make it copy the adapter as the reference), and we score the model it wrapped.
    """
    from peft import LoraConfig

    torch.manual_seed(3)
    model = load_model(str(model_dir))
    model.config.use_cache = False
    return model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM",
                             init_lora_weights=False)


def _ours(model, cfg, pairs, tokenizer) -> dict:
    """Step-0 metrics the way the training loop computes them (one packed pass per micro-batch of pairs)."""
    objective = PreferenceObjective(model, cfg, tokenizer.pad_token_id)
    objective.data = {"train": pairs, "validation": []}
    objective.module.eval()
    total, chosen_rewards, rejected_rewards = 0.0, [], []
    with torch.no_grad():
        for mb in objective.batches("train", list(range(len(pairs)))):
            loss, _ = objective.loss(objective.module, mb, "cpu")
            total += float(loss)
            args = mb.model_args()
            policy = PairLogps.from_interleaved(objective.module(*args), mb.sequence_tokens)
            with model.disable_adapter():
                reference = PairLogps.from_interleaved(objective.module(*args), mb.sequence_tokens)
            chosen_rewards.append(BETA * (policy.chosen - reference.chosen))
            rejected_rewards.append(BETA * (policy.rejected - reference.rejected))
    c, r = torch.cat(chosen_rewards), torch.cat(rejected_rewards)
    return {"loss": total / len(pairs), "rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()),
            "rewards/margins": float((c - r).mean()), "rewards/accuracies": float((c > r).float().mean())}


def _ours_logps(model, cfg, pairs, tokenizer) -> dict:
    objective = PreferenceObjective(model, cfg, tokenizer.pad_token_id)
    objective.data = {"train": pairs, "validation": []}
    with torch.no_grad():
        stats = sum(objective.loss(objective.module.eval(), mb, "cpu")[1] for mb in objective.batches("train", list(range(len(pairs)))))
    return {"logps/chosen": float(stats[3]) / len(pairs), "logps/rejected": float(stats[4]) / len(pairs)}


def _answer_end(example) -> int:
    """One past the last trained token; the trained tokens must be one contiguous answer."""
    trained = [i for i, label in enumerate(example.labels) if label != -100]
    assert trained == list(range(trained[0], trained[-1] + 1))
    return trained[-1] + 1


def _pretokenized(pairs) -> list[dict]:
    """Our data layer's tokens in TRL's tokenized columns: the shared prompt, then each answer's trained tokens."""
    out = []
    for p in pairs:
        n = first_label(p.chosen)
        out.append({"prompt_ids": p.chosen.input_ids[:n], "chosen_ids": p.chosen.input_ids[n:_answer_end(p.chosen)],
                    "rejected_ids": p.rejected.input_ids[n:_answer_end(p.rejected)]})
    return out


class PretokenizedDPOTrainer(trl.DPOTrainer):
    """TRL's trainer on rows that already hold `prompt_ids` / `chosen_ids` / `rejected_ids` (skips its tokenizer)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def _trl_trainer(model_dir, tokenizer, rows: list[dict], loss: str, tmp_path):
    """TRL's trainer on one batch of all the pairs, one step."""
    from datasets import Dataset

    base, lora = _base_and_lora(model_dir)
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), max_steps=1,
                         learning_rate=1e-6, beta=BETA, loss_type=[loss], logging_steps=1, report_to=[],
                         save_strategy="no", use_cpu=True, bf16=False, fp16=False, max_length=None,
                         disable_dropout=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    return PretokenizedDPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tokenizer, peft_config=lora)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_step0_loss_rewards_and_logps_equal_trl_dpotrainer(setup, loss, tmp_path):
    model_dir, data, tokenizer = setup
    cfg = _config(model_dir, data, loss)
    pairs = prepare_data(cfg, tokenizer).train
    assert len(pairs) == 8
    trainer = _trl_trainer(model_dir, tokenizer, _pretokenized(pairs), loss, tmp_path)
    model = trainer.model  # the PeftModel TRL built; ours is scored before TRL's step changes it
    ours = {**_ours(model, cfg, pairs, tokenizer), **_ours_logps(model, cfg, pairs, tokenizer)}
    trainer.train()
    theirs = trainer.state.log_history[0]  # TRL's first step logs what it computed before its update
    print(f"\n{loss}: ours {ours}\n{loss}: trl  {({k: theirs[k] for k in ours})}")
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6, abs=1e-6)
    assert ours["loss"] != pytest.approx(0.6931, abs=1e-3) or loss == "ipo"  # the adapter moved the policy away
    assert ours["logps/chosen"] == pytest.approx(theirs["logps/chosen"], abs=1e-4)
    assert ours["logps/rejected"] == pytest.approx(theirs["logps/rejected"], abs=1e-4)
    if loss == "sigmoid":  # IPO's logged rewards differ by design: ours from per-token mean log-ratios, TRL's from sums
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
        assert abs(ours["rewards/margins"]) > 1e-3  # a real difference from the reference was compared


def test_trl_tokenizes_the_rows_to_our_prompt_and_answer_tokens(setup, tmp_path):
    """TRL's own tokenization of the same rows: the same prompt tokens, and each answer our tokens plus only what
    the chat template puts after the end-of-turn token (which neither tool's loss should depend on)."""
    from datasets import Dataset

    model_dir, data, tokenizer = setup
    pairs = prepare_data(_config(model_dir, data, "sigmoid"), tokenizer).train
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to=[], use_cpu=True, bf16=False, max_length=None)
    base, lora = _base_and_lora(model_dir)
    trainer = trl.DPOTrainer(model=base, args=args, train_dataset=Dataset.from_list(_rows()), processing_class=tokenizer,
                             peft_config=lora)
    for theirs, ours in zip(trainer.train_dataset, _pretokenized(pairs)):
        assert theirs["prompt_ids"] == ours["prompt_ids"]
        for key in ("chosen_ids", "rejected_ids"):
            assert theirs[key][:len(ours[key])] == ours[key]
            assert tokenizer.decode(theirs[key][len(ours[key]):]).strip() == ""
