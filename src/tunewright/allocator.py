"""`train.allocator`: the malloc a training process runs with, chosen before torch loads.

Why: glibc's malloc keeps the blocks of freed activations in its heap instead of giving them back, so
about a third of a DPO run's peak RSS held no live tensor. tcmalloc and jemalloc return them cheaply
(SmolLM2-135M LoRA: DPO 2.69 -> 1.96 GB peak RSS, SFT 2.23 -> 1.77 GB); tcmalloc was the faster of the two
and no slower than glibc (docs/performance.md). PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`)
preloads tcmalloc by default for the same reason.

A malloc can only be swapped when a process starts (LD_PRELOAD), so `tunewright train` re-executes
itself once with it set, before torch is imported, guarded by an environment variable so it never
loops. The Python API cannot re-execute the caller's interpreter: there, `auto` records what the
process started with (`LD_PRELOAD=/path/libtcmalloc_minimal.so.4 python ...` gives it tcmalloc).
This module is outside `train/` because importing that package loads torch.
"""
from __future__ import annotations

import ctypes.util
import fnmatch
import glob
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

ALLOCATORS = ("system", "jemalloc", "tcmalloc")
PREFERRED = ("tcmalloc", "jemalloc")  # what `auto` preloads, first found wins (measured: docs/performance.md)
LIBRARY_GLOBS = {"jemalloc": ("libjemalloc.so*",), "tcmalloc": ("libtcmalloc_minimal.so*", "libtcmalloc.so*")}
LINK_NAMES = {"jemalloc": "jemalloc", "tcmalloc": "tcmalloc_minimal"}  # ctypes.util.find_library's names
INSTALL_HINT = {"tcmalloc": "Debian/Ubuntu: apt-get install libtcmalloc-minimal4; Fedora: dnf install gperftools-libs",
                "jemalloc": "Debian/Ubuntu: apt-get install libjemalloc2; Fedora: dnf install jemalloc; conda: conda install jemalloc"}
REEXEC_GUARD = "TUNEWRIGHT_ALLOCATOR_REEXEC"  # set by the re-execution: its count, so it happens at most once
WHY = "freed activation memory goes back to the OS (glibc keeps it: DPO peak 2.69 -> 1.96 GB, docs/performance.md)"
QUIET = {"tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40)}}  # no stderr line per allocation over 1 GB


@dataclass(frozen=True)
class Plan:
    """What the CLI does before training: `name` to run with, its `library` (None: glibc) and why."""

    name: str
    library: str | None
    reason: str


def library_dirs() -> list[str]:
    """Where distributions and environments put shared libraries (the places torch's run_cpu searches, and more)."""
    arch = platform.machine()
    dirs = [os.environ.get("CONDA_PREFIX", ""), os.environ.get("VIRTUAL_ENV", ""), sys.prefix]
    dirs = [f"{d}/lib" for d in dirs if d]
    return dirs + [f"/usr/lib/{arch}-linux-gnu", "/usr/local/lib", "/usr/local/lib64", "/usr/lib64", "/usr/lib"]


def find_library(name: str, dirs: list[str] | None = None) -> str | None:
    """The path of allocator `name`'s shared library, or the loader's name for it, or None when not installed."""
    for folder in library_dirs() if dirs is None else dirs:
        for pattern in LIBRARY_GLOBS[name]:
            found = sorted(p for p in glob.glob(os.path.join(folder, pattern)) if os.path.isfile(p))
            if found:
                return found[0]
    return ctypes.util.find_library(LINK_NAMES[name]) if dirs is None else None


def loaded_allocator(maps: str | None = None) -> tuple[str, str | None]:
    """The allocator mapped into this process (from /proc/self/maps) and its library path; ("system", None) for glibc."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "system", None
    for line in maps.splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        base = os.path.basename(path)
        for name in PREFERRED:
            if any(fnmatch.fnmatch(base, pattern) for pattern in LIBRARY_GLOBS[name]):
                return name, path
    return "system", None


def is_launched_worker(env: dict[str, str]) -> bool:
    """A process torchrun / accelerate started: its launcher watches it, so it is never re-executed."""
    return "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env


def plan(setting: str, env: dict[str, str] | None = None, system: str | None = None, find=find_library) -> Plan:
    """The allocator `setting` (auto | system | jemalloc | tcmalloc) asks for on this machine, and why.

    An explicit library that is not installed is a UserError naming the key and how to install it.
    """
    env = os.environ if env is None else env
    system = system or platform.system()
    if setting not in ("auto", *ALLOCATORS):
        raise UserError(f"train.allocator={setting!r} is not one of auto, {', '.join(ALLOCATORS)}",
                        "set train.allocator to auto (tcmalloc or jemalloc when installed), system (glibc), tcmalloc or jemalloc")
    if setting == "system":
        return Plan("system", None, "system: glibc malloc, as set")
    if system != "Linux":
        return _not_preloaded(setting, f"preloading a malloc needs Linux (LD_PRELOAD), not {system}")
    if is_launched_worker(env):
        return _not_preloaded(setting, "a torchrun/accelerate worker is never re-executed; preload it for every worker "
                                       "with LD_PRELOAD before the launcher")
    wanted = PREFERRED if setting == "auto" else (setting,)
    for name in wanted:
        library = find(name)
        if library:
            return Plan(name, library, f"{name}: {library}; {WHY}")
    if setting != "auto":
        raise UserError(f"train.allocator={setting}: its shared library was not found in {', '.join(library_dirs())}",
                        f"install it ({INSTALL_HINT[setting]}), or set train.allocator: auto or system")
    return Plan("system", None, "system: glibc malloc, neither tcmalloc nor jemalloc is installed "
                                f"(install one for less memory: {INSTALL_HINT['tcmalloc']})")


def _not_preloaded(setting: str, why: str) -> Plan:
    if setting == "auto":
        return Plan("system", None, f"system: {why}")
    raise UserError(f"train.allocator={setting}: {why}", "set train.allocator: auto or system")


def reexec_count(env: dict[str, str] | None = None) -> int:
    """How many times this process was re-executed to preload an allocator (0 or 1)."""
    return int((os.environ if env is None else env).get(REEXEC_GUARD) or 0)


def restart_allowed(env: dict[str, str] | None = None, maps: str | None = None) -> bool:
    """Whether the CLI may restart itself: not restarted before, and no allocator mapped yet.

    One the user preloaded (LD_PRELOAD) is kept: a second preloaded malloc would not replace it cleanly.
    """
    env = os.environ if env is None else env
    return reexec_count(env) == 0 and loaded_allocator(maps)[0] == "system"


def preload_for_training(setting: str) -> None:
    """CLI only, before torch loads: restart this command with the planned allocator preloaded (at most once)."""
    if not restart_allowed():
        return
    chosen = plan(setting)
    if chosen.library is None:
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = os.pathsep.join(p for p in (chosen.library, env.get("LD_PRELOAD", "")) if p)
    env[REEXEC_GUARD] = str(reexec_count() + 1)
    env = QUIET.get(chosen.name, {}) | env  # the user's own settings win
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as e:  # the interpreter could not be started again: train with glibc rather than not at all
        print(f"warning: could not restart with {chosen.library} preloaded ({e}); training with glibc malloc", file=sys.stderr)


def running_choice(setting: str) -> tuple[str, str]:
    """What config.yaml records for train.allocator: the allocator this process really runs with, and why."""
    name, library = loaded_allocator()
    if name != "system":
        how = "preloaded by tunewright train" if reexec_count() else "preloaded by LD_PRELOAD"
        asked = f"; {WHY}" if setting in ("auto", name) else f" ({setting} was asked)"
        return name, f"{name}: {library}, {how}{asked}"
    try:
        wanted = plan(setting)
    except UserError as e:
        return "system", f"system: {e.message}"
    if wanted.name == "system":
        return "system", wanted.reason
    if reexec_count():
        return "system", f"system: preloading {wanted.library} failed (see the loader's message above)"
    return "system", (f"system: this process started without {wanted.name}, and only `tunewright train` restarts "
                      f"itself with it (Python API: start python with LD_PRELOAD={wanted.library})")


def environment_record() -> dict:
    """For environment.json: the allocator mapped into the training process and how it got there."""
    name, library = loaded_allocator()
    return {"name": name, "library": library, "reexecs": reexec_count(), "ld_preload": os.environ.get("LD_PRELOAD", "")}
