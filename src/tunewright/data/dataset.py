"""Turn a run's data config into tokenized train/validation examples plus a report of everything done to them.

Tokenizing renders each conversation several times (once per assistant turn, for the loss mask),
so the result is cached as an Arrow file through `datasets`, keyed by the conversations' content,
the tokenizer (vocab, template, special tokens), max_seq_len, train_on and a version constant:
a second identical run loads it instead of tokenizing again.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig, RunConfig
from ..errors import UserError
from . import templates
from .conversation import Conversation, LoadedFiles, LoadedRows
from .formats import load_conversations
from .template_kwargs import apply_template_defaults, resolve_template_kwargs
from .templates import TokenizedExample
from .validate import bad_rows_error, bad_rows_json, duplicate_counts, overlap_count

CACHE_VERSION = 1  # bump when tokenization or the cached columns change
AUTO_SPLIT_FROM, AUTO_SPLIT_ROWS = 1_000, 200  # validation_split: auto holds out rows from this size up, at most this many


@dataclass
class PreparedData:
    train: list[TokenizedExample]  # objective dpo/orpo: list[PreferencePair]
    validation: list[TokenizedExample]
    validation_conversations: list[Conversation]  # untokenized, for generation-based evaluation
    report: dict = field(default_factory=dict)  # JSON-serialisable; saved as run_dir/data_report.json


@dataclass
class TokenizedSplit:
    """Conversations and their examples (truncated, one per conversation, same order), with what the report needs."""

    conversations: list[Conversation] = field(default_factory=list)
    examples: list[TokenizedExample] = field(default_factory=list)
    full_lengths: list[int] = field(default_factory=list)  # token count before truncation
    cache_hit: bool = True  # nothing to tokenize counts as a hit
    cache_file: str | None = None

    def select(self, indices: list[int]) -> TokenizedSplit:
        return TokenizedSplit([self.conversations[i] for i in indices], [self.examples[i] for i in indices],
                              [self.full_lengths[i] for i in indices], self.cache_hit, self.cache_file)

    def kept(self) -> list[TokenizedExample]:
        """Examples with something to train: the rest (all truncated away, weight 0 everywhere) teach nothing."""
        return [e for e in self.examples if e.trained_tokens]

    def dropped_sources(self) -> list[str]:
        return [c.source for c, e in zip(self.conversations, self.examples) if not e.trained_tokens]


def prepare_sft_data(cfg: RunConfig, tokenizer) -> PreparedData:
    """Load, validate, split, tokenize (cached) and report the training data of an sft run."""
    data = cfg.data
    train_rows, val_rows = load_rows(data, tokenizer, cfg.objective)
    # template variables (Qwen3 enable_thinking) become the template's defaults: training and inference render alike
    template_kwargs = resolve_template_kwargs(tokenizer, train_rows.conversations, data.chat_template_kwargs)
    apply_template_defaults(tokenizer, template_kwargs)
    everything = tokenize_cached(train_rows.conversations, tokenizer, data)
    data = with_split_resolved(data, len(everything.examples))
    if data.validation:
        train, val, val_source = everything, tokenize_cached(val_rows.conversations, tokenizer, data), "file"
    elif data.validation_split > 0:
        held = set(held_out_indices(len(everything.examples), data))
        train = everything.select([i for i in range(len(everything.examples)) if i not in held])
        val, val_source = everything.select(sorted(held)), "split"
    else:
        train, val, val_source = everything, TokenizedSplit(), "none"
    if not train.kept():
        raise UserError(
            f"no training example has any trained tokens left after truncation to {data.max_seq_len} tokens",
            "raise data.max_seq_len, shorten the prompts, or check the per-message weights",
        )
    report = build_report(data, train_rows, val_rows, train, val, val_source)
    report["chat_template_kwargs"] = template_kwargs
    report["cache_hit"] = everything.cache_hit and val.cache_hit
    report["cache_file"] = everything.cache_file
    return PreparedData(train.kept(), val.kept(), val.conversations, report)


def load_rows(data: DataConfig, tokenizer, objective: str = "sft") -> tuple[LoadedRows, LoadedRows]:
    """Training and validation rows, with the bad-row policy applied: fail lists them all in one error.

    The tokenizer's chat template decides which chats with roles out of order data.allow_any_role_order keeps.
    """
    if not data.train:
        raise UserError("no training data given", "set data.train in the config, or pass --data PATH")
    order = {"any_role_order": data.allow_any_role_order, "tokenizer": tokenizer, "objective": objective}
    train_rows = load_conversations(data.train, data.format, **order)
    val_rows = load_conversations(data.validation, data.format, **order) if data.validation else LoadedRows()
    bad = train_rows.bad_rows + val_rows.bad_rows
    if bad and data.on_bad_rows == "fail":
        raise bad_rows_error(bad)
    if not train_rows.conversations:
        raise UserError(f"no usable training rows in {data.train}", "check the data.train paths and the bad rows listed by `tunewright data check`")
    return train_rows, val_rows


def with_split_resolved(data: DataConfig, n_rows: int) -> DataConfig:
    """`validation_split: auto` as a number: ~10% (at most 200 rows) from 1,000 rows up when no validation file is given.

    Below that size every row is worth more for training; above it a held-out set costs little and
    lets `epochs: auto` stop on validation loss and keep the best weights.
    """
    if data.validation_split != "auto":
        return data
    share = 0.0 if data.validation or n_rows < AUTO_SPLIT_FROM else round(min(0.1, AUTO_SPLIT_ROWS / n_rows), 4)
    return data.model_copy(update={"validation_split": share})


def split_reason(data: DataConfig, report: dict) -> str:
    """The one-line reason config.yaml and the CLI give for an `auto` validation_split."""
    if data.validation:
        return "0: a validation file is given"
    if report.get("validation_source") == "split":
        return f"{report['validation_split']:g}: {report['validation_examples']} of the rows held out (from {AUTO_SPLIT_FROM:,} rows up, at most {AUTO_SPLIT_ROWS})"
    return f"0: under {AUTO_SPLIT_FROM:,} training rows every row trains; no validation data, so no early stopping"


def held_out_indices(n: int, data: DataConfig) -> list[int]:
    """Which rows the seeded validation_split (a number: see with_split_resolved) holds out, the same on every run with that seed."""
    if n < 2:
        raise UserError(f"{n} training row: too few to hold out a validation split", "add examples, or set data.validation_split: 0")
    n_val = min(n - 1, max(1, round(n * data.validation_split)))
    order = list(range(n))
    random.Random(data.seed).shuffle(order)
    return sorted(order[:n_val])


# --- tokenization and its cache ---------------------------------------------------------------


def tokenize_one(tokenizer, conv: Conversation, max_seq_len: int, train_on: str) -> tuple[TokenizedExample, int]:
    """One conversation rendered with the chat template, masked, and truncated; plus its full length."""
    ex = templates.tokenize_conversation(tokenizer, conv, train_on=train_on)
    return templates.truncate(ex, max_seq_len), len(ex.input_ids)


def tokenize_cached(convs: list[Conversation], tokenizer, data: DataConfig) -> TokenizedSplit:
    """Tokenize through a `datasets` Arrow cache file, so identical inputs are tokenized only once."""
    import datasets

    if not convs:
        return TokenizedSplit()
    key = cache_key(convs, tokenizer, data.max_seq_len, data.train_on)
    path = cache_dir() / f"{key}.arrow"
    hit = path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)

    def tokenize_batch(batch: dict) -> dict:
        out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": [], "full_length": []}
        for i in batch["index"]:
            ex, full = tokenize_one(tokenizer, convs[i], data.max_seq_len, data.train_on)
            out["input_ids"].append(ex.input_ids)
            out["labels"].append(ex.labels)
            out["truncated"].append(ex.truncated)
            out["full_length"].append(full)
        return out

    datasets.disable_progress_bars()
    index = datasets.Dataset.from_dict({"index": list(range(len(convs)))})
    ds = index.map(tokenize_batch, batched=True, batch_size=256, remove_columns=["index"],
                   cache_file_name=str(path), new_fingerprint=key, load_from_cache_file=True, desc="tokenizing")
    cols = ds.to_dict()
    examples = [TokenizedExample(i, lab, bool(t)) for i, lab, t in zip(cols["input_ids"], cols["labels"], cols["truncated"])]
    return TokenizedSplit(list(convs), examples, list(cols["full_length"]), cache_hit=hit, cache_file=str(path))


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEWRIGHT_TOKENIZED_CACHE") or Path.home() / ".cache" / "tunewright" / "tokenized")


def cache_key(convs: list[Conversation], tokenizer, max_seq_len: int, train_on: str) -> str:
    """What the tokenized result depends on: the conversations' content, the tokenizer, and the settings."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([CACHE_VERSION, conversations_digest(convs), tokenizer_fingerprint(tokenizer), max_seq_len, train_on])


def conversations_digest(convs: list[Conversation]) -> str:
    """A content hash of the conversations (the files' rows after parsing, format detection and bad-row removal)."""
    h = hashlib.sha256()
    for c in convs:
        if c.is_text:
            h.update(b"T\x00" + (c.text or "").encode("utf-8") + b"\x1e")
            continue
        for m in c.messages:
            h.update(f"{m.role}\x00{m.train}\x00".encode() + m.content.encode("utf-8") + b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything about a tokenizer that changes the ids and labels it produces."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    specials = {k: str(v) for k, v in tokenizer.special_tokens_map.items()}
    flags = [getattr(tokenizer, name, None) for name in ("add_bos_token", "add_eos_token", "padding_side")]
    return Hasher.hash([type(tokenizer).__name__, model, tokenizer.chat_template, specials, flags])


# --- the report -------------------------------------------------------------------------------


def length_stats(lengths: list[int]) -> dict:
    """Nearest-rank percentiles of token counts: p50/p90/p99/max/mean."""
    if not lengths:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    s = sorted(lengths)

    def pct(q: float) -> int:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": s[-1], "mean": round(sum(s) / len(s), 1)}


def split_summary(split: TokenizedSplit) -> dict:
    kept = split.kept()
    dropped = split.dropped_sources()
    tokens = sum(len(e.input_ids) for e in kept)
    trained = sum(e.trained_tokens for e in kept)
    return {
        "examples": len(kept),
        "truncated": sum(1 for e in split.examples if e.truncated),
        "dropped": len(dropped),
        "dropped_examples": dropped[:10],
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_token_share": round(trained / tokens, 4) if tokens else 0.0,
        "token_lengths": length_stats(split.full_lengths),
    }


def files_summary(rows: LoadedFiles, split: str) -> list[dict]:
    """Each file read, its split, detected format and row count (data reports and `data check`)."""
    return [{"path": p, "split": split, "format": rows.formats.get(p, "unknown"), "rows": n} for p, n in rows.rows_per_file.items()]


def build_report(data: DataConfig, train_rows: LoadedRows, val_rows: LoadedRows, train: TokenizedSplit, val: TokenizedSplit, val_source: str) -> dict:
    """The data report (run_dir/data_report.json): what was read, skipped, truncated, dropped and measured."""
    bad = train_rows.bad_rows + val_rows.bad_rows
    train_sum, val_sum = split_summary(train), split_summary(val)
    overlap = overlap_count(train.conversations, val.conversations)
    return {
        "version": CACHE_VERSION,
        "files": files_summary(train_rows, "train") + files_summary(val_rows, "validation"),
        "format": data.format,
        "rows": len(train_rows.conversations) + len(val_rows.conversations),
        "bad_rows": bad_rows_json(bad),
        "bad_row_count": len(bad),
        "skipped_rows": len(bad),  # reaching here with bad rows means on_bad_rows: skip
        "on_bad_rows": data.on_bad_rows,
        "role_order_allowed": train_rows.role_order_allowed + val_rows.role_order_allowed,
        "validation_source": val_source,
        "validation_split": data.validation_split if val_source == "split" else None,
        "seed": data.seed,
        "max_seq_len": data.max_seq_len,
        "train_on": data.train_on,
        "train_examples": train_sum["examples"],
        "validation_examples": val_sum["examples"],
        "truncated": train_sum["truncated"] + val_sum["truncated"],
        "dropped": train_sum["dropped"] + val_sum["dropped"],
        "token_lengths": train_sum["token_lengths"],
        "trained_token_share": train_sum["trained_token_share"],
        "train": train_sum,
        "validation": val_sum,
        "duplicates": duplicate_counts(train.conversations),
        "train_validation_overlap": overlap["count"],
        "overlap_examples": overlap["examples"],
    }
