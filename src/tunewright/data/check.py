"""`tunewright data check`: everything worth knowing about a dataset before spending compute on it.

Measures with the model's own tokenizer and chat template (the caller loads only the tokenizer),
so the lengths and the trained-token share are the ones training will see, and says whether
fine-tuning is the right tool for a dataset of this size and kind.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

from .conversation import Conversation, LoadedRows
from .dataset import files_summary, length_stats, tokenize_one
from .formats import data_kind, load_conversations, read_detected
from .validate import bad_rows_json, duplicate_counts, overlap_count

# (lowest example count, what that many examples can teach), from the product brief
SIZE_GUIDANCE = [
    (100_000, "100,000+ examples: enough for deep specialisation"),
    (50_000, "50,000-100,000 examples: domain expertise, approaching deep specialisation"),
    (5_000, "5,000-50,000 examples: enough for domain expertise"),
    (500, "500-5,000 examples: enough for task specialisation, consistent output format"),
    (100, "100-500 examples: enough for a style or tone shift, basic behaviour change"),
    (0, "under 100 examples: prompting (few-shot) may be enough"),
]
RECENCY = re.compile(
    r"\b(20[2-9]\d|today|yesterday|tomorrow|latest|as of|this (?:week|month|year)|recent(?:ly)?|current(?:ly)?|nowadays|right now)\b",
    re.IGNORECASE,
)
RECENCY_SHARE_WARN = 0.10
DUPLICATE_SHARE_WARN = 0.05


def check_data(paths, tokenizer, model: str, max_seq_len: int = 1024, fmt: str = "auto", validation=None,
               allow_any_role_order: bool = False) -> dict:
    """Validate and measure data files with `model`'s tokenizer; the report says what training would see (JSON-serialisable)."""
    start = time.perf_counter()
    files, missing = read_detected(paths, fmt)
    val_files = read_detected(validation, fmt) if validation else ([], [])
    if data_kind(files + val_files[0]) == "preference":  # data check has no objective: the files say which kind
        report = check_pairs((files, missing), val_files if validation else None, tokenizer, model, max_seq_len, fmt)
        report["seconds"] = round(time.perf_counter() - start, 2)
        return report
    order = {"any_role_order": allow_any_role_order, "tokenizer": tokenizer}
    train = _with_missing(load_conversations(paths, fmt, files=files, **order), missing)
    val = _with_missing(load_conversations(validation, fmt, files=val_files[0], **order), val_files[1]) if validation else LoadedRows()
    measured = measure(train.conversations, tokenizer, max_seq_len)
    bad = train.bad_rows + val.bad_rows
    report = {
        "kind": "sft",
        "model": model,
        "max_seq_len": max_seq_len,
        "format": fmt,
        "files": files_summary(train, "train") + files_summary(val, "validation"),
        "rows": len(train.conversations),
        "validation_rows": len(val.conversations),
        "bad_rows": bad_rows_json(bad),
        "bad_row_count": len(bad),
        "role_order_allowed": train.role_order_allowed + val.role_order_allowed,
        **measured,
        "duplicates": duplicate_counts(train.conversations),
        "train_validation_overlap": overlap_count(train.conversations, val.conversations) if validation else None,
        "recency_rows": sum(1 for c in train.conversations if _hinges_on_time(c)),
    }
    report["guidance"] = guidance(report)
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report


def _with_missing(rows: LoadedRows, missing: list) -> LoadedRows:
    """Paths that were not there come first among the bad rows, as load_conversations lists them."""
    rows.bad_rows[:0] = missing
    return rows


def check_pairs(train_files: tuple, val_files: tuple | None, tokenizer, model: str, max_seq_len: int, fmt: str) -> dict:
    """The data check of preference pairs: pairs, prompt/chosen/rejected token lengths, truncation, drops, duplicates, bad rows."""
    from .pairs import (
        duplicate_pairs,
        prompt_overlap,
        sort_bad_rows,
        split_lengths,
        tokenize_pairs,
    )
    from .preference import load_pairs

    train = load_pairs(None, fmt, files=train_files[0])
    val = load_pairs(None, fmt, files=val_files[0]) if val_files else None
    tokens = tokenize_pairs(train.pairs, tokenizer, max_seq_len)
    val_tokens = tokenize_pairs(val.pairs, tokenizer, max_seq_len) if val else None
    bad = list(train_files[1]) + sort_bad_rows(train.bad_rows + tokens.bad_rows)
    if val:
        bad += list(val_files[1]) + sort_bad_rows(val.bad_rows + val_tokens.bad_rows)
    report = {
        "kind": "preference", "model": model, "max_seq_len": max_seq_len, "format": fmt,
        "files": files_summary(train, "train") + (files_summary(val, "validation") if val else []),
        "rows": len(tokens.pairs), "pairs": len(tokens.pairs), "validation_rows": len(val_tokens.pairs) if val else 0,
        "bad_rows": bad_rows_json(bad), "bad_row_count": len(bad),
        **split_lengths(tokens), "truncated": tokens.truncated, "dropped": len(tokens.dropped), "dropped_examples": tokens.dropped[:10],
        "duplicates": duplicate_pairs(tokens.rows),
        "train_validation_overlap": prompt_overlap(tokens.rows, val_tokens.rows) if val else None,
    }
    report["guidance"] = pairs_guidance(report)
    return report


def pairs_guidance(report: dict) -> dict:
    n, warnings = report["pairs"], []
    if n < 100:
        warnings.append(f"only {n} pair{'s' if n != 1 else ''}: preference tuning on this few mostly memorises them")
    if report["duplicates"]["exact"]:
        warnings.append(f"{report['duplicates']['exact']} pairs repeat an earlier pair exactly: they over-weight it; deduplicate")
    if report["truncated"]:
        warnings.append(f"{report['truncated']} pairs have an answer longer than {report['max_seq_len']} tokens with its prompt, "
                        "cut from the right: raise data.max_seq_len or shorten them")
    if report["dropped"]:
        warnings.append(f"{report['dropped']} pairs have identical answers once cut to max_seq_len and would be dropped")
    overlap = report.get("train_validation_overlap")
    if overlap and overlap["count"]:
        warnings.append(f"{overlap['count']} validation pairs share their prompt with a training pair: held-out accuracy will be inflated")
    return {"size": size_guidance(n).replace("examples", "pairs"), "warnings": warnings}


def measure(convs: list[Conversation], tokenizer, max_seq_len: int) -> dict:
    """Token lengths with the chat template, truncation and drop counts, and the trained-token share."""
    lengths, tokens, trained, truncated, dropped = [], 0, 0, 0, []
    for conv in convs:
        ex, full = tokenize_one(tokenizer, conv, max_seq_len, "assistant")
        lengths.append(full)
        truncated += ex.truncated
        if not ex.trained_tokens:
            dropped.append(conv.source)
            continue
        tokens += len(ex.input_ids)
        trained += ex.trained_tokens
    return {
        "token_lengths": length_stats(lengths),
        "length_histogram": length_histogram(lengths),
        "truncated": truncated,
        "dropped": len(dropped),
        "dropped_examples": dropped[:10],
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_token_share": round(trained / tokens, 4) if tokens else 0.0,
    }


def length_histogram(lengths: list[int], bins: int = 20) -> list[dict]:
    """Token lengths in equal-width bins ({lo, hi, count}; hi exclusive but the last), for a histogram with the max_seq_len cut."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = max(1, math.ceil((hi - lo + 1) / bins))
    counts = [0] * math.ceil((hi - lo + 1) / width)
    for n in lengths:
        counts[(n - lo) // width] += 1
    return [{"lo": lo + i * width, "hi": lo + (i + 1) * width, "count": c} for i, c in enumerate(counts)]


def _hinges_on_time(conv: Conversation) -> bool:
    """A question or answer about dates or recent events: the model's knowledge will go stale."""
    if conv.is_text:
        return bool(RECENCY.search(conv.text or ""))
    asked = next((m.content for m in reversed(conv.messages) if m.role == "user"), "")
    return bool(RECENCY.search(asked) or RECENCY.search(conv.reference()))


def size_guidance(n: int) -> str:
    for lowest, advice in SIZE_GUIDANCE:
        if n >= lowest:
            return advice
    return SIZE_GUIDANCE[-1][1]


def guidance(report: dict) -> dict:
    """What this many examples can teach, plus warnings where the data (or fine-tuning) looks wrong."""
    n = report["rows"]
    warnings = []
    if n < 100:
        warnings.append(f"only {n} example{'s' if n != 1 else ''}: fine-tuning on this few mostly memorises them; try few-shot prompting first")
    if n and report["recency_rows"] / n >= RECENCY_SHARE_WARN:
        warnings.append(
            f"{report['recency_rows']} of {n} examples mention dates or recent events (2023+, today, latest, current): "
            "facts that change are better served by retrieval (RAG) than baked into weights"
        )
    dup = report["duplicates"]
    if n and (dup["exact"] + dup["near"]) / n >= DUPLICATE_SHARE_WARN:
        warnings.append(f"{dup['exact']} exact and {dup['near']} near duplicates: they over-weight those examples; deduplicate")
    if dup["same_prompt_other_answer"]:
        warnings.append(f"{dup['same_prompt_other_answer']} examples repeat a prompt with a different answer: check they do not contradict")
    if report["truncated"]:
        warnings.append(f"{report['truncated']} examples are longer than {report['max_seq_len']} tokens and would be truncated: raise data.max_seq_len or shorten them")
    if report["dropped"]:
        warnings.append(f"{report['dropped']} examples would have no trained tokens left and would be dropped")
    if report.get("role_order_allowed"):
        warnings.append(f"{report['role_order_allowed']} chats have their roles out of order (kept by allow_any_role_order: "
                        "the chat template renders them, but check that is what the model should learn)")
    overlap = report.get("train_validation_overlap")
    if overlap and overlap["count"]:
        warnings.append(f"{overlap['count']} validation examples share their prompt with a training example: evaluation scores will be inflated")
    return {"size": size_guidance(n), "warnings": warnings}


def print_check_report(report: dict, console=None) -> None:
    """The report as rich tables: files, bad rows, lengths, duplicates, guidance."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    files = Table(title="Files", title_justify="left")
    for col in ("file", "split", "format", "rows"):
        files.add_column(col, justify="right" if col == "rows" else "left")
    for f in report["files"]:
        files.add_row(f["path"], f["split"], f["format"], str(f["rows"]))
    console.print(files)
    if report["bad_rows"]:
        _print_bad_rows(console, report)
    pairs = report.get("kind") == "preference"
    console.print(_pair_lengths_table(report) if pairs else _lengths_table(report))
    console.print(_pair_quality_table(report) if pairs else _quality_table(report))
    g = report["guidance"]
    noun = "preference pair" if pairs else "example"
    console.print(f"[bold]{report['rows']} usable {noun}{'s' if report['rows'] != 1 else ''}[/] ({g['size']})", highlight=False)
    for w in g["warnings"]:
        console.print(f"[yellow]warning:[/] {_escape(w)}", highlight=False)
    verdict = f"[red]{report['bad_row_count']} bad rows[/]: fix them or set data.on_bad_rows: skip" if report["bad_rows"] else "[green]no bad rows[/]"
    console.print(f"{verdict} ({report['seconds']} s)", highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _print_bad_rows(console, report: dict, shown: int = 50) -> None:
    """One line per bad row, `file:line: field: reason`, unwrapped so editors and terminals can jump to it."""
    console.print(f"[bold red]Bad rows ({report['bad_row_count']})[/]")
    for b in report["bad_rows"][:shown]:
        console.print(f"  {_escape(b['source'])}: [bold]{_escape(b['field'])}[/]: {_escape(b['reason'])}", highlight=False, soft_wrap=True)
        console.print(f"      [dim]fix: {_escape(b['fix'])}[/]", highlight=False, soft_wrap=True)
    if report["bad_row_count"] > shown:
        console.print(f"  ... and {report['bad_row_count'] - shown} more (use --json for all)")


def _lengths_table(report: dict):
    from rich.table import Table

    t = Table(title=f"Tokens per example ({Path(report['model']).name} chat template)", title_justify="left")
    stats = report["token_lengths"]
    for col in ("p50", "p90", "p99", "max", "mean", f"> {report['max_seq_len']}", "no trained tokens", "trained share"):
        t.add_column(col, justify="right")
    t.add_row(*(str(stats[k]) for k in ("p50", "p90", "p99", "max", "mean")), str(report["truncated"]), str(report["dropped"]),
              f"{report['trained_token_share']:.0%}")
    return t


def _quality_table(report: dict):
    from rich.table import Table

    t = Table(title="Duplicates and overlap", title_justify="left")
    for col in ("exact dups", "near dups", "same prompt", "train/validation overlap"):
        t.add_column(col, justify="right")
    d, o = report["duplicates"], report["train_validation_overlap"]
    t.add_row(str(d["exact"]), str(d["near"]), str(d["same_prompt_other_answer"]), "-" if o is None else str(o["count"]))
    return t


def _pair_lengths_table(report: dict):
    from rich.table import Table

    t = Table(title=f"Tokens per pair ({Path(report['model']).name} chat template; answers include their end-of-turn)", title_justify="left")
    for col in ("", "p50", "p90", "p99", "max", "mean"):
        t.add_column(col, justify="right")
    for name, key in (("prompt", "prompt_lengths"), ("chosen", "chosen_lengths"), ("rejected", "rejected_lengths"), ("prompt + longer answer", "token_lengths")):
        t.add_row(name, *(str(report[key][k]) for k in ("p50", "p90", "p99", "max", "mean")))
    return t


def _pair_quality_table(report: dict):
    from rich.table import Table

    t = Table(title="Truncation, duplicates and overlap", title_justify="left")
    for col in (f"answer cut at {report['max_seq_len']}", "dropped", "duplicate pairs", "train/validation overlap"):
        t.add_column(col, justify="right")
    o = report["train_validation_overlap"]
    t.add_row(str(report["truncated"]), str(report["dropped"]), str(report["duplicates"]["exact"]), "-" if o is None else str(o["count"]))
    return t
