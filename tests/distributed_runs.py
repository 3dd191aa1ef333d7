"""Multi-process training runs (torchrun on gloo) for the distributed tests, bounded in time."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN_TIMEOUT_S = 300  # a hang in a collective fails the test instead of blocking the suite


def _rows(n):
    words = ["apple", "river", "stone", "cloud", "green", "tiger", "paper", "light"]
    return [{"messages": [{"role": "user", "content": f"Say {words[i % 8]} {i % 5} times."},
                          {"role": "assistant", "content": " ".join([words[i % 8]] * (i % 5 + 1))}]} for i in range(n)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_bounded(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `cmd`; on timeout kill it and every descendant, then fail.

    torchrun starts each worker in a session of its own, so killing torchrun's process group would
    leave hung workers behind (holding our pipes open): psutil finds them by ancestry instead.
    """
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        family = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(family, timeout=30)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[0]} did not finish in {timeout}s (a rank waiting in a collective?)\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def torchrun_cmd(args: list[str]) -> list[str]:
    """`args` (a `python` argument list) under torchrun with two processes on a free port."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), *args]


def train_one_and_two_processes(args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """The same training arguments in one process (tmp_path/one) and in two gloo processes (tmp_path/two)."""
    single = _run_bounded([sys.executable, *args, "--output", str(tmp_path / "one")], TORCHRUN_TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = _run_bounded(torchrun_cmd([*args, "--output", str(tmp_path / "two")]), TORCHRUN_TIMEOUT_S)
    assert multi.returncode == 0, multi.stderr[-3000:]
    return tmp_path / "one", tmp_path / "two"
