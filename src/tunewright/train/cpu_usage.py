"""How many cores other processes are using right now, for `threads: auto`.

The 1-minute load average is the wrong signal: by the time `auto` resolves, our own model loading
and tokenization have pushed it to ~0.6-1.0 on an idle machine, so a 2-core machine trained on one
thread (issue 13). The system's CPU time over a short window, minus this process's own CPU time
in the same window, counts only what others use at that moment.
"""
from __future__ import annotations

import os
import time

import psutil

WINDOW_S = 0.5  # long enough for 50 clock ticks per core, short next to model loading


def _busy_seconds(t) -> float:
    """CPU seconds not idle (guest time is already inside user on Linux)."""
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def _all_seconds(t) -> float:
    return _busy_seconds(t) + t.idle + getattr(t, "iowait", 0.0)


def cores_busy_elsewhere(before, after, own_seconds: float, cores: int) -> float:
    """Cores kept busy by other processes between two `psutil.cpu_times()` readings.

    `own_seconds` is this process's CPU time (all its threads) over the same window; `cores` is
    the machine's, as the readings sum over all of them.
    """
    elapsed = _all_seconds(after) - _all_seconds(before)  # summed over every core
    if elapsed <= 0:
        return 0.0
    others = _busy_seconds(after) - _busy_seconds(before) - own_seconds
    return max(0.0, min(float(cores), cores * others / elapsed))


def _own_cpu_seconds(me: psutil.Process) -> float:
    t = me.cpu_times()
    return t.user + t.system


def measure_busy_elsewhere(window_s: float = WINDOW_S) -> float:
    """Sample the machine for `window_s` seconds; cores used by every process but this one."""
    me = psutil.Process()
    before, own_before = psutil.cpu_times(), _own_cpu_seconds(me)
    time.sleep(window_s)
    after, own_after = psutil.cpu_times(), _own_cpu_seconds(me)
    return cores_busy_elsewhere(before, after, own_after - own_before, psutil.cpu_count() or 1)


def usable_cores() -> int:
    """Cores this process may run on (a cgroup/taskset limit counts), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(cores: int, busy_elsewhere: float) -> int:
    """The threads to train with: cores minus those others keep busy (rounded), at least 1."""
    return max(1, min(cores, cores - round(busy_elsewhere)))
