"""Preference pairs tokenized for training: rendered like SFT, truncated visibly, split, measured and reported.

Each pair becomes two examples, prompt + chosen and prompt + rejected, rendered whole by the model's chat template
through templates.tokenize_conversation (so only the answer and its end-of-turn token are labelled, as in SFT).
Both start with the identical prompt ids; a template that renders the prompt differently before the two answers
makes the row a bad row. Prompts are never cut (cutting their start drops the system prompt and BOS, a prompt the
model never sees at inference): a prompt that alone fills max_seq_len is a bad row, and answers that run past it are
cut from the right and counted. A pair whose two answers are identical after that cut teaches nothing and is dropped.
Not cached (unlike SFT): two renderings per pair are cheap next to a preference step, which runs two sequences.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import UserError
from . import templates
from .conversation import BadRow
from .formats import RowError, position
from .preference import PreferencePair, PreferenceRow

PROMPT_TOO_LONG_FIX = "raise data.max_seq_len, or shorten the prompt (its system message or earlier turns)"


@dataclass
class TokenizedPairs:
    """Rows and their tokenized pairs (kept ones, same order), with what the report needs."""

    rows: list[PreferenceRow] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    prompt_lengths: list[int] = field(default_factory=list)  # per kept pair, before truncation
    chosen_lengths: list[int] = field(default_factory=list)  # answer tokens (+ end of turn)
    rejected_lengths: list[int] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # sources of pairs whose answers were identical once truncated

    def select(self, indices: list[int]) -> TokenizedPairs:
        pick = lambda xs: [xs[i] for i in indices]
        return TokenizedPairs(pick(self.rows), pick(self.pairs), pick(self.prompt_lengths), pick(self.chosen_lengths),
                              pick(self.rejected_lengths))

    @property
    def truncated(self) -> int:
        return sum(1 for p in self.pairs if p.chosen.truncated or p.rejected.truncated)


def first_label(example: templates.TokenizedExample) -> int:
    """Index of the first trained token: the prompt is everything before it."""
    return next((i for i, label in enumerate(example.labels) if label != -100), len(example.labels))


def tokenize_pair(tokenizer, row: PreferenceRow, max_seq_len: int) -> tuple[PreferencePair, int, int, int]:
    """The pair truncated to max_seq_len, plus its prompt, chosen and rejected lengths before truncation."""
    try:
        chosen = templates.tokenize_conversation(tokenizer, row.conversation(row.chosen))
        rejected = templates.tokenize_conversation(tokenizer, row.conversation(row.rejected))
    except UserError as e:
        raise RowError(row.prompt_field, e.message, e.fix or "check the model's chat template") from e
    prompt_len = first_label(chosen)
    if first_label(rejected) != prompt_len or chosen.input_ids[:prompt_len] != rejected.input_ids[:prompt_len]:
        raise RowError(row.prompt_field, "the chat template renders the prompt differently before the two answers",
                       "check the model's chat template (the prompt must not depend on the answer)")
    if prompt_len == len(chosen.labels) or prompt_len == len(rejected.labels):
        raise RowError(row.prompt_field, "the chat template leaves no answer tokens to train", "check the model's chat template")
    if prompt_len >= max_seq_len:
        raise RowError(row.prompt_field, f"the prompt alone is {prompt_len} tokens, filling max_seq_len ({max_seq_len}): no room for an answer",
                       PROMPT_TOO_LONG_FIX)
    pair = PreferencePair(templates.truncate(chosen, max_seq_len), templates.truncate(rejected, max_seq_len), row.source)
    return pair, prompt_len, len(chosen.input_ids) - prompt_len, len(rejected.input_ids) - prompt_len


def tokenize_pairs(rows: list[PreferenceRow], tokenizer, max_seq_len: int) -> TokenizedPairs:
    """Every row tokenized; rows that cannot be become bad rows (in line order), pairs that teach nothing are dropped."""
    out = TokenizedPairs()
    for row in rows:
        try:
            pair, p, c, r = tokenize_pair(tokenizer, row, max_seq_len)
        except RowError as e:
            out.bad_rows.append(e.bad_row(row.source))
            continue
        if answer_ids(pair.chosen) == answer_ids(pair.rejected):
            out.dropped.append(row.source)
            continue
        out.rows.append(row)
        out.pairs.append(pair)
        out.prompt_lengths.append(p)
        out.chosen_lengths.append(c)
        out.rejected_lengths.append(r)
    return out


def answer_ids(example: templates.TokenizedExample) -> list[int]:
    return [label for label in example.labels if label != -100]


def sort_bad_rows(bad: list[BadRow]) -> list[BadRow]:
    """Bad rows grouped by file, in line order within each."""
    return sorted(bad, key=lambda b: (b.source.rsplit(":", 1)[0], position(b.source)))


def duplicate_pairs(rows: list[PreferenceRow], examples: int = 5) -> dict:
    """Rows repeating an earlier row's prompt, chosen and rejected exactly (they over-weight that pair)."""
    seen: dict[bytes, str] = {}
    hits = []
    for row in rows:
        key = pair_digest(row)
        if key in seen:
            hits.append(f"{row.source} = {seen[key]}")
        seen.setdefault(key, row.source)
    return {"exact": len(hits), "examples": hits[:examples]}


def pair_digest(row: PreferenceRow, answers: bool = True) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for m in row.prompt:
        h.update(f"{m.role}\x00{m.content.strip()}\x1f".encode())
    if answers:
        h.update(f"\x1e{row.chosen.strip()}\x1e{row.rejected.strip()}".encode())
    return h.digest()


def prompt_overlap(train: list[PreferenceRow], validation: list[PreferenceRow], examples: int = 5) -> dict:
    """Validation pairs whose prompt is also a training prompt: they inflate the held-out preference accuracy."""
    seen = {pair_digest(r, answers=False): r.source for r in train}
    hits = [f"{r.source} ~ {seen[d]}" for r in validation if (d := pair_digest(r, answers=False)) in seen]
    return {"count": len(hits), "examples": hits[:examples]}


# --- a run's preference data (prepare_data when objective is dpo or orpo) ----------------------


def prepare_preference_data(cfg, tokenizer):
    """Load, validate, render, split and report the preference pairs of a run (PreparedData of PreferencePairs)."""
    from .dataset import PreparedData, held_out_indices, with_split_resolved
    from .preference import load_pairs
    from .template_kwargs import apply_template_defaults, resolve_template_kwargs
    from .validate import bad_rows_error

    data = cfg.data
    if not data.train:
        raise UserError("no training data given", "set data.train in the config, or pass --data PATH")
    train_rows = load_pairs(data.train, data.format, objective=cfg.objective)
    val_rows = load_pairs(data.validation, data.format, objective=cfg.objective) if data.validation else None
    convs = [c for r in train_rows.pairs for c in (r.conversation(r.chosen), r.conversation(r.rejected))]
    template_kwargs = resolve_template_kwargs(tokenizer, convs, data.chat_template_kwargs)
    apply_template_defaults(tokenizer, template_kwargs)
    everything = tokenize_pairs(train_rows.pairs, tokenizer, data.max_seq_len)
    val = tokenize_pairs(val_rows.pairs, tokenizer, data.max_seq_len) if val_rows else TokenizedPairs()
    bad = sort_bad_rows(train_rows.bad_rows + everything.bad_rows + (val_rows.bad_rows + val.bad_rows if val_rows else []))
    if bad and data.on_bad_rows == "fail":
        raise bad_rows_error(bad)
    if not everything.pairs:
        raise UserError(f"no usable preference pairs in {data.train}", "check the data.train paths and the bad rows listed by `tunewright data check`")
    train, val_source = everything, "file" if val_rows else "none"
    data = with_split_resolved(data, len(everything.pairs))
    if not val_rows and data.validation_split > 0:
        held = set(held_out_indices(len(everything.pairs), data))
        train = everything.select([i for i in range(len(everything.pairs)) if i not in held])
        val, val_source = everything.select(sorted(held)), "split"
    report = pairs_report(data, [train_rows] + ([val_rows] if val_rows else []), bad, train, val, everything.dropped + val.dropped)
    report.update(objective=cfg.objective, validation_source=val_source, chat_template_kwargs=template_kwargs, cache_hit=False, cache_file=None,
                  validation_split=data.validation_split if val_source == "split" else None, train_on=data.train_on, seed=data.seed)
    return PreparedData(train.pairs, val.pairs, [r.chosen_conversation() for r in val.rows], report)


def split_lengths(split: TokenizedPairs) -> dict:
    """Token-length percentiles of the prompts, the chosen and rejected answers, and the longer sequence of each pair."""
    from .dataset import length_stats

    longer = [p + max(c, r) for p, c, r in zip(split.prompt_lengths, split.chosen_lengths, split.rejected_lengths)]
    return {"token_lengths": length_stats(longer), "prompt_lengths": length_stats(split.prompt_lengths),
            "chosen_lengths": length_stats(split.chosen_lengths), "rejected_lengths": length_stats(split.rejected_lengths)}


def split_summary(split: TokenizedPairs) -> dict:
    tokens = sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in split.pairs)
    return {"pairs": len(split.pairs), "truncated": split.truncated, "tokens": tokens, **split_lengths(split)}


def pairs_report(data, loaded: list, bad: list[BadRow], train: TokenizedPairs, val: TokenizedPairs, dropped: list[str]) -> dict:
    """The data report of a preference run (run_dir/data_report.json): pairs, lengths, truncation, drops, duplicates."""
    from .dataset import files_summary
    from .validate import bad_rows_json

    files = [f for rows, split in zip(loaded, ("train", "validation")) for f in files_summary(rows, split)]
    train_sum, val_sum = split_summary(train), split_summary(val)
    overlap = prompt_overlap(train.rows, val.rows)
    return {
        "version": 1, "kind": "preference", "files": files, "format": data.format,
        "rows": sum(len(rows.pairs) for rows in loaded), "pairs": train_sum["pairs"] + val_sum["pairs"],
        "bad_rows": bad_rows_json(bad), "bad_row_count": len(bad), "skipped_rows": len(bad), "on_bad_rows": data.on_bad_rows,
        "max_seq_len": data.max_seq_len, "train_examples": train_sum["pairs"], "validation_examples": val_sum["pairs"],
        "truncated": train_sum["truncated"] + val_sum["truncated"], "dropped": len(dropped), "dropped_examples": dropped[:10],
        **{k: train_sum[k] for k in ("token_lengths", "prompt_lengths", "chosen_lengths", "rejected_lengths")},
        "train": train_sum, "validation": val_sum, "duplicates": duplicate_pairs(train.rows),
        "train_validation_overlap": overlap["count"], "overlap_examples": overlap["examples"],
    }
