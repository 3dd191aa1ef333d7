"""Writes that a full disk cannot turn into half files, and the one message a failed write gives.

Every file of the run directory is written whole or not at all (a temporary name, then a
rename, which needs no space), a metrics line is appended whole or not at all, and a failed
write (ENOSPC, EDQUOT, EIO...) becomes a `WriteFailed` naming the path, the errno, the last
good checkpoint and the fix, so the CLI exits 2 with no traceback.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError

# libraries that write through their own code report the errno only in their message:
# safetensors says "(os error 28)"; torch.save to a path says nothing, so save to an open file
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")
_STRERROR_IN_TEXT = {os.strerror(errno.ENOSPC): errno.ENOSPC, os.strerror(errno.EDQUOT): errno.EDQUOT}
_SPACE = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


class WriteFailed(UserError):
    """A file of the run could not be written; what was written before is intact."""

    def __init__(self, path: Path, error_number: int | None, detail: str, last_good: Path | None):
        self.path, self.errno, self.last_good = Path(path), error_number, last_good
        mount = mount_point(self.path)
        name = errno.errorcode.get(error_number, "unknown error") if error_number else "unknown error"
        why = _SPACE.get(error_number, "the write failed")
        good = str(last_good) if last_good is not None else "none yet"
        message = f"could not write {self.path}: {why} ({name}: {detail}); last good checkpoint: {good}"
        super().__init__(message, _fix(error_number, mount, last_good))


def _fix(error_number: int | None, mount: Path, last_good: Path | None) -> str:
    first = f"free space on {mount}" if error_number in _SPACE else f"make {mount} writable again"
    if error_number == errno.EDQUOT:
        first += " (or raise your quota)"
    then = "run the same command with --resume" if last_good is not None else \
        "run the same command with another --output (no checkpoint was written yet)"
    return f"{first}, then {then}"


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (itself, its cause or context, or one its message quotes), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc
        text = str(exc)
        if (m := _OS_ERROR_IN_TEXT.search(text)) is not None:
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        for words, number in _STRERROR_IN_TEXT.items():
            if words in text:
                return OSError(number, words)
        exc = exc.__cause__ or exc.__context__
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem `path` is (or would be) on: where space must be freed."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` whole or not at all: an existing file is replaced only by a complete one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks may rewrite the same file
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line whole or not at all: a failed append is cut back off (truncating needs no space)."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except BaseException:
        with open(path, "r+b") as f:
            f.truncate(size)
        raise


def replace_folder(tmp: Path, final: Path) -> None:
    """Put a complete folder in place of `final`; an old `final` is removed only once the new one is there."""
    old = final.with_name(f".old-{final.name}")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_quietly(path: Path) -> None:
    """Remove a half-written file or folder; never raises (the write that failed is the error to report)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
