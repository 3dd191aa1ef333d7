"""`tunewright data check`: everything worth knowing about a dataset before spending compute on it.

Measures with the model's own tokenizer and chat template (only the tokenizer is loaded), so the
lengths and the trained-token share are the ones training will see, and says whether fine-tuning
is the right tool for a dataset of this size and kind.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from .conversation import Conversation, LoadedRows
from .dataset import length_stats, tokenize_one
from .formats import load_conversations
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


def check_data(paths, model: str | None = None, max_seq_len: int = 1024, fmt: str = "auto", validation=None,
               allow_any_role_order: bool = False) -> dict:
    """Validate and measure data files; the report says what training would see (JSON-serialisable)."""
    start = time.perf_counter()
    model = model or _default_model()
    tokenizer = _load_tokenizer(model)
    order = {"any_role_order": allow_any_role_order, "tokenizer": tokenizer}
    train = load_conversations(paths, fmt, **order)
    val = load_conversations(validation, fmt, **order) if validation else LoadedRows()
    measured = measure(train.conversations, tokenizer, max_seq_len)
    bad = train.bad_rows + val.bad_rows
    report = {
        "model": model,
        "max_seq_len": max_seq_len,
        "format": fmt,
        "files": _files(train, "train") + _files(val, "validation"),
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


def _default_model() -> str:
    from ..models import EMBEDDED_DEFAULT

    return EMBEDDED_DEFAULT


def _load_tokenizer(model: str):
    """Only the tokenizer (the embedded GGUF's folder is dequantized once and cached by models.py)."""
    from ..models import load_tokenizer, local_model_dir

    return load_tokenizer(local_model_dir(model))


def _files(rows: LoadedRows, split: str) -> list[dict]:
    return [{"path": p, "split": split, "format": rows.formats.get(p, "unknown"), "rows": n} for p, n in rows.rows_per_file.items()]


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
        "truncated": truncated,
        "dropped": len(dropped),
        "dropped_examples": dropped[:10],
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_token_share": round(trained / tokens, 4) if tokens else 0.0,
    }


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
    console.print(_lengths_table(report))
    console.print(_quality_table(report))
    g = report["guidance"]
    console.print(f"[bold]{report['rows']} usable example{'s' if report['rows'] != 1 else ''}[/] ({g['size']})", highlight=False)
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
