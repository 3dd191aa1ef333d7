"""`threads: auto` counts the cores other processes use now, not our own start-up's load (issue 13)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil
import pytest

from tunewright.train import cpu_usage
from tunewright.train.cpu_usage import (
    cores_busy_elsewhere,
    idle_cores,
    measure_busy_elsewhere,
)
from tunewright.train.hparams import auto_threads


def _times(busy: float, idle: float):
    """A planted psutil.cpu_times() reading: `busy` and `idle` CPU seconds summed over all cores."""
    return psutil._pslinux.scputimes(busy, 0, 0, idle, 0, 0, 0, 0, 0, 0)


def test_our_own_cpu_time_is_not_counted_as_busy():
    # 2 cores, 1 s: 1.0 busy core-second, all of it ours (loading the model) -> nobody else is busy
    busy = cores_busy_elsewhere(_times(0, 0), _times(1.0, 1.0), own_seconds=1.0, cores=2)
    assert busy == 0.0
    assert idle_cores(2, busy) == 2


def test_another_process_busy_on_one_core_leaves_one_thread():
    # 2 cores, 1 s: 1.9 core-seconds busy, 0.9 of them ours -> another process holds one core
    busy = cores_busy_elsewhere(_times(0, 0), _times(1.9, 0.1), own_seconds=0.9, cores=2)
    assert busy == pytest.approx(1.0)
    assert idle_cores(2, busy) == 1


def test_a_fully_busy_machine_still_trains_on_one_thread():
    busy = cores_busy_elsewhere(_times(0, 0), _times(8.0, 0.0), own_seconds=0.0, cores=8)
    assert busy == 8.0 and idle_cores(8, busy) == 1


def test_auto_threads_ignores_the_load_average_our_start_up_raised(monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (1.9, 1.9, 1.9))  # what loading a model leaves behind
    monkeypatch.setattr(cpu_usage, "usable_cores", lambda: 2)
    assert auto_threads(busy_elsewhere=lambda: 0.1) == 2


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        pass


def test_a_planted_busy_process_is_counted_and_our_own_busy_thread_is_not():
    """Real processes: a child spinning a core counts; this process spinning one in a thread does not."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stop = threading.Event()
    ours = threading.Thread(target=_spin, args=(stop,), daemon=True)
    try:
        time.sleep(0.3)  # the child is running
        spinner, me = psutil.Process(child.pid), psutil.Process()
        child_before, own_before, sys_before, t0 = sum(spinner.cpu_times()[:2]), sum(me.cpu_times()[:2]), psutil.cpu_times(), time.perf_counter()
        ours.start()
        busy = measure_busy_elsewhere(window_s=1.0)
        wall = time.perf_counter() - t0
        child_share = (sum(spinner.cpu_times()[:2]) - child_before) / wall
        own_share = (sum(me.cpu_times()[:2]) - own_before) / wall
        system_busy = cores_busy_elsewhere(sys_before, psutil.cpu_times(), 0.0, psutil.cpu_count())
    finally:
        stop.set()
        child.kill()
        child.wait()
    # on a loaded machine either may get a small share: each check holds whatever the share, since
    # other processes' load only adds to `busy` and `system_busy` alike
    assert child_share > 0 and own_share > 0, "the planted process and our thread both ran"
    assert busy >= child_share - 0.1, f"the planted process is counted ({busy:.2f} < {child_share:.2f})"
    assert busy <= system_busy - own_share + 0.1, f"our own thread is not ({busy:.2f}, machine {system_busy:.2f}, ours {own_share:.2f})"
