"""`train.allocator`: which malloc `tunewright train` restarts itself with, and what the run records.

The rules run on injected inputs (libraries found or not, platform, environment); one real subprocess of
the CLI trains the tiny model and reads, from its own /proc/self/maps, that the preferred allocator (tcmalloc)
was mapped after exactly one restart (skipped where it is not installed: `make allocator` installs it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import write_jsonl
from typer.testing import CliRunner

from tunewright import allocator
from tunewright.cli import app
from tunewright.config import load_config
from tunewright.errors import UserError

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
PREFERRED = allocator.PREFERRED[0]
INSTALLED = allocator.find_library(PREFERRED)


def finder(**found):
    return lambda name: found.get(name)


def test_auto_preloads_tcmalloc_when_it_is_installed():
    chosen = allocator.plan("auto", env={}, system="Linux", find=finder(jemalloc=JEMALLOC, tcmalloc=TCMALLOC))
    assert (chosen.name, chosen.library) == ("tcmalloc", TCMALLOC)
    assert chosen.reason.startswith(f"tcmalloc: {TCMALLOC}")


def test_auto_falls_back_to_jemalloc_then_to_glibc_with_an_install_hint():
    assert allocator.plan("auto", env={}, system="Linux", find=finder(jemalloc=JEMALLOC)).library == JEMALLOC
    chosen = allocator.plan("auto", env={}, system="Linux", find=finder())
    assert (chosen.name, chosen.library) == ("system", None)
    assert "apt-get install libtcmalloc-minimal4" in chosen.reason


def test_auto_never_restarts_a_launched_worker_or_off_linux():
    found = finder(tcmalloc=TCMALLOC)
    assert allocator.plan("auto", env={"LOCAL_RANK": "0"}, system="Linux", find=found).name == "system"
    assert allocator.plan("auto", env={}, system="Darwin", find=found).name == "system"


def test_explicit_choices():
    found = finder(jemalloc=JEMALLOC, tcmalloc=TCMALLOC)
    assert allocator.plan("tcmalloc", env={}, system="Linux", find=found).library == TCMALLOC
    assert allocator.plan("system", env={}, system="Linux", find=found).library is None


def test_an_explicit_library_that_is_not_installed_names_the_key_and_the_fix():
    with pytest.raises(UserError) as e:
        allocator.plan("jemalloc", env={}, system="Linux", find=finder())
    assert "train.allocator=jemalloc" in e.value.message
    assert "apt-get install libjemalloc2" in e.value.fix and "auto" in e.value.fix


def test_an_unknown_allocator_is_a_config_error_with_exit_2():
    with pytest.raises(UserError) as e:
        load_config(overrides=["train.allocator=mimalloc"])
    assert "train.allocator" in e.value.message
    result = CliRunner().invoke(app, ["train", "--set", "train.allocator=mimalloc"])
    assert result.exit_code == 2 and "train.allocator" in result.output
    with pytest.raises(UserError, match="train.allocator='mimalloc'"):
        allocator.plan("mimalloc")


def test_find_library_searches_the_given_folders(tmp_path):
    assert allocator.find_library("jemalloc", dirs=[str(tmp_path)]) is None
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.find_library("jemalloc", dirs=[str(tmp_path)]) == str(tmp_path / "libjemalloc.so.2")


def test_the_mapped_allocator_is_read_from_proc_maps():
    line = "7f1c2a000000-7f1c2a02a000 r--p 00000000 08:01 1234 {}\n"
    assert allocator.loaded_allocator(line.format("/usr/lib/x86_64-linux-gnu/libc.so.6")) == ("system", None)
    assert allocator.loaded_allocator(line.format(JEMALLOC)) == ("jemalloc", JEMALLOC)


def test_restart_only_once_and_only_when_no_allocator_is_mapped_yet():
    libc = "7f-8f r--p 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    assert allocator.restart_allowed(env={}, maps=libc)
    assert not allocator.restart_allowed(env={allocator.REEXEC_GUARD: "1"}, maps=libc)  # the loader refused it: no loop
    assert not allocator.restart_allowed(env={}, maps=libc + f"7f-8f r-xp 0 08:01 2 {JEMALLOC}\n")  # LD_PRELOAD'ed by the user
    assert not allocator.restart_allowed(env={}, maps=libc + f"7f-8f r-xp 0 08:01 2 {TCMALLOC}\n")  # another one: kept


def test_the_restart_prepends_the_library_sets_the_guard_and_keeps_the_users_settings(monkeypatch):
    started = {}
    monkeypatch.setattr(allocator, "restart_allowed", lambda: True)
    monkeypatch.setattr(allocator, "plan", lambda setting: allocator.Plan("tcmalloc", TCMALLOC, ""))
    monkeypatch.setattr(allocator.os, "execve", lambda path, argv, env: started.update(path=path, argv=argv, env=env))
    monkeypatch.setenv("LD_PRELOAD", "/opt/mine.so")
    monkeypatch.delenv(allocator.REEXEC_GUARD, raising=False)
    monkeypatch.delenv("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", raising=False)
    allocator.preload_for_training("auto")
    env = started["env"]
    assert started["path"] == sys.executable and started["argv"][1:] == sys.orig_argv[1:]
    assert env["LD_PRELOAD"] == f"{TCMALLOC}:/opt/mine.so" and env[allocator.REEXEC_GUARD] == "1"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) > 2**30  # no stderr line per allocation over 1 GB
    monkeypatch.setenv("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", "123")
    allocator.preload_for_training("auto")
    assert started["env"]["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "123"


@pytest.mark.skipif(sys.platform != "linux" or INSTALLED is None,
                    reason=f"{PREFERRED} is not installed (make allocator / apt-get install libtcmalloc-minimal4)")
def test_cli_train_runs_with_the_preferred_allocator_mapped_after_one_restart(tiny_model_dir, chat_rows, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tunewright.cli", "train", "--model", str(tiny_model_dir), "--output", str(run),
           "--data", str(write_jsonl(tmp_path / "train.jsonl", chat_rows[:16])),
           "--set", "train.max_steps=1", "--set", "train.threads=1", "--set", "train.precision=fp32",
           "--set", "eval.after_train=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.REEXEC_GUARD)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((run / "environment.json").read_text())["allocator"]
    assert record["name"] == PREFERRED and record["library"] == os.path.realpath(INSTALLED)  # mapped in the training process itself
    assert record["reexecs"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["allocator"] == PREFERRED
    assert done.stderr.count(f"auto train.allocator = {PREFERRED}") == 1


def test_the_python_api_records_glibc_and_says_how_to_preload(monkeypatch):
    monkeypatch.setattr(allocator, "loaded_allocator", lambda maps=None: ("system", None))
    monkeypatch.setattr(allocator, "plan", lambda setting: allocator.Plan("jemalloc", JEMALLOC, ""))
    monkeypatch.delenv(allocator.REEXEC_GUARD, raising=False)
    name, reason = allocator.running_choice("auto")
    assert name == "system" and f"LD_PRELOAD={JEMALLOC}" in reason
    monkeypatch.setenv(allocator.REEXEC_GUARD, "1")  # restarted, yet the loader did not map it
    assert allocator.running_choice("auto") == ("system", f"system: preloading {JEMALLOC} failed (see the loader's message above)")
