"""Read data files into raw records that remember where they came from, never raising for bad input.

Every problem becomes a BadRow with a `file:line` source, so one run reports all of them at once.
JSONL is parsed line by line (each bad line gets its own line number); JSON arrays element by element
(the source is the element's starting line); CSV record by record with the `csv` module (the source is
the physical line a record starts on, even after quoted fields that span lines); Parquet through `datasets`.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversation import BadRow

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
UTF8_BOM = b"\xef\xbb\xbf"
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's default (128 KiB) is smaller than a long conversation
FIX_UTF8 = "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


@dataclass
class Record:
    source: str  # "file:line" (JSON arrays: the element's first line; Parquet: "file:[row]")
    row: dict


@dataclass
class FileRecords:
    path: str
    records: list[Record] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    rows: int = 0  # data rows found, good or bad


def expand_paths(paths: str | Path | list) -> tuple[list[Path], list[BadRow]]:
    """Files named directly or found in folders (sorted, data suffixes only); missing paths become BadRows."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    bad: list[BadRow] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                bad.append(BadRow(f"{path}:0", "path", f"folder has no {', '.join(SUFFIXES)} files", "put the data files in it or name them directly"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            bad.append(BadRow(f"{path}:0", "path", "no such file or folder", "check the path (relative paths start from the current folder)"))
    return files, bad


def read_file(path: Path) -> FileRecords:
    """Records of one file by its suffix; unreadable, empty or unsupported files yield one BadRow."""
    out = FileRecords(str(path))
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        out.bad_rows.append(BadRow(f"{path}:0", "path", f"unsupported file type '{suffix or path.name}'", f"use one of {', '.join(SUFFIXES)}"))
        return out
    try:
        if path.stat().st_size == 0:
            out.bad_rows.append(BadRow(f"{path}:0", "file", "empty file", "add examples to it or remove it from the data paths"))
            return out
        data = path.read_bytes() if suffix in (".jsonl", ".json", ".csv") else b""
    except OSError as e:
        out.bad_rows.append(BadRow(f"{path}:0", "path", f"cannot read file ({e.strerror or e})", "check the file permissions"))
        return out
    if suffix == ".jsonl":
        _read_jsonl(path, data, out)
    elif suffix == ".json":
        _read_json(path, data, out)
    elif suffix == ".csv":
        _read_csv(path, data, out)
    else:
        _read_parquet(path, out)
    if out.rows == 0 and not out.bad_rows:
        out.bad_rows.append(BadRow(f"{path}:0", "file", "no rows in file", "add examples to it or remove it from the data paths"))
    return out


def _add_row(out: FileRecords, source: str, row: Any) -> None:
    out.rows += 1
    if isinstance(row, dict):
        out.records.append(Record(source, row))
    else:
        out.bad_rows.append(BadRow(source, "row", f"expected a JSON object, got {type(row).__name__}", "write each example as one {...} object"))


def _read_jsonl(path: Path, data: bytes, out: FileRecords) -> None:
    data = data.removeprefix(UTF8_BOM)  # editors on Windows write one; it is not part of the first row
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        source = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            out.rows += 1
            out.bad_rows.append(BadRow(source, "encoding", f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})", FIX_UTF8))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            out.rows += 1
            out.bad_rows.append(BadRow(source, "json", f"invalid JSON ({e.msg} at column {e.colno})", "write one complete JSON object per line"))
            continue
        _add_row(out, source, row)


def _decode_whole(path: Path, data: bytes, out: FileRecords) -> str | None:
    """UTF-8 text of a whole-file format, or None after reporting the first undecodable line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        out.rows += 1
        out.bad_rows.append(BadRow(f"{path}:{line}", "encoding", f"not UTF-8 (byte {data[e.start]:#04x})", FIX_UTF8))
        return None


def _read_json(path: Path, data: bytes, out: FileRecords) -> None:
    text = _decode_whole(path, data, out)
    if text is None:
        return
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            # a .json file holding JSON Lines is common enough to accept as such
            _read_jsonl(path, data, out)
            return
        rows = _unwrap_object(obj)
        for i, row in enumerate(rows):
            _add_row(out, f"{path}:[{i}]", row)
        return
    _read_json_array(path, text, start + 1, out)


def _unwrap_object(obj: Any) -> list:
    """A top-level object is one example, unless it wraps the list of examples ({"data": [...]})."""
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(obj) == 1 and len(lists) == 1 and not {"messages", "conversations"} & set(obj):
            return lists[0]
    return [obj]


def _read_json_array(path: Path, text: str, pos: int, out: FileRecords) -> None:
    """Decode a JSON array element by element so every element gets its own line number."""
    decoder = json.JSONDecoder()
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n:
            out.bad_rows.append(BadRow(f"{path}:{text.count(chr(10)) + 1}", "json", "invalid JSON (array is not closed with ']')", "close the array"))
            return
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            out.rows += 1
            out.bad_rows.append(BadRow(f"{path}:{e.lineno}", "json", f"invalid JSON ({e.msg} at column {e.colno})", "fix the JSON syntax there; the rest of the file was not read"))
            return
        _add_row(out, f"{path}:{line}", row)


def _read_csv(path: Path, data: bytes, out: FileRecords) -> None:
    """CSV with the standard `csv` module, so each record's source is the physical line it starts on.

    A quoted field may span lines; a record with more fields than the header, a broken quote or bytes
    that are not UTF-8 make that record a bad row and the rest of the file is still read.
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)
    bad_lines = _undecodable_lines(data)
    text = data.decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    first = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            out.rows += 1
            out.bad_rows.append(BadRow(f"{path}:{first}", "csv", f"cannot parse this record ({e})", "quote the field with \"...\" and double any \" inside it"))
            first = reader.line_num + 1
            continue
        start, first = first, reader.line_num + 1
        if not cells:
            continue  # a blank line
        if header is None:
            header = cells
            _report_header_encoding(path, bad_lines, start, reader.line_num, out)
            continue
        _add_csv_record(out, path, header, cells, start, _first_bad_line(bad_lines, start, reader.line_num))


def _undecodable_lines(data: bytes) -> dict[int, str]:
    """Physical line -> why it is not UTF-8 (byte and column), for every line that is not."""
    bad = {}
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad[lineno] = f"byte {raw[e.start]:#04x} at column {e.start + 1}"
    return bad


def _first_bad_line(bad_lines: dict[int, str], start: int, end: int) -> tuple[int, str] | None:
    return next(((n, bad_lines[n]) for n in range(start, end + 1) if n in bad_lines), None)


def _report_header_encoding(path: Path, bad_lines: dict[int, str], start: int, end: int, out: FileRecords) -> None:
    bad = _first_bad_line(bad_lines, start, end)
    if bad:
        out.bad_rows.append(BadRow(f"{path}:{start}", "encoding", f"header is not UTF-8 ({bad[1]} on line {bad[0]})", FIX_UTF8))


def _add_csv_record(out: FileRecords, path: Path, header: list[str], cells: list[str], start: int, bad: tuple[int, str] | None) -> None:
    source = f"{path}:{start}"
    if bad is not None:
        out.rows += 1
        where = bad[1] if bad[0] == start else f"{bad[1]} on line {bad[0]}"
        out.bad_rows.append(BadRow(source, "encoding", f"not UTF-8 ({where})", FIX_UTF8))
    elif len(cells) > len(header):
        out.rows += 1
        out.bad_rows.append(BadRow(source, "csv", f"{len(cells)} fields where the header has {len(header)}",
                                   "quote fields that contain commas (\"a, b\"), or add the missing column to the header"))
    else:
        _add_row(out, source, {k: _csv_value(v) for k, v in zip(header, cells)})


def _csv_value(v: Any) -> Any:
    """CSV cells stay text (an empty cell is a missing value); JSON-looking cells (messages columns) are parsed."""
    if v is None or v == "":
        return None
    stripped = v.strip()
    if stripped[:1] in "[{" and stripped[-1:] in "]}":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return v
    return v


def _read_parquet(path: Path, out: FileRecords) -> None:
    try:
        rows = _datasets_rows("parquet", path)
    except Exception as e:
        out.bad_rows.append(BadRow(f"{path}:0", "parquet", f"cannot read Parquet ({_short(e)})", "re-export the file (e.g. pandas.DataFrame.to_parquet)"))
        return
    for i, row in enumerate(rows):
        _add_row(out, f"{path}:[{i}]", row)


def _datasets_rows(builder: str, path: Path, **kwargs) -> list[dict]:
    """Rows of a CSV or Parquet file read by the `datasets` library, kept in memory (its cache is thrown away)."""
    import tempfile

    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="tunewright-read-") as cache:
        ds = datasets.load_dataset(builder, data_files=str(path.resolve()), split="train", keep_in_memory=True, cache_dir=cache, **kwargs)
        return ds.to_list()


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:200]
