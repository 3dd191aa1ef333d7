"""`train.allocator`: which malloc `tunewright train` restarts itself with, and what the run records.

The rules run on injected inputs (libraries found or not, platform, environment); one real subprocess of
the CLI trains the tiny model and reads, from its own /proc/self/maps, that jemalloc was mapped after exactly
one restart (skipped where jemalloc is not installed: `make allocator` installs it).
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
INSTALLED = allocator.find_library("jemalloc")


def finder(**found):
    return lambda name: found.get(name)


def test_auto_preloads_jemalloc_when_it_is_installed():
    chosen = allocator.plan("auto", env={}, system="Linux", find=finder(jemalloc=JEMALLOC, tcmalloc=TCMALLOC))
    assert (chosen.name, chosen.library) == ("jemalloc", JEMALLOC)
    assert chosen.reason.startswith(f"jemalloc: {JEMALLOC}")


def test_auto_falls_back_to_tcmalloc_then_to_glibc_with_an_install_hint():
    assert allocator.plan("auto", env={}, system="Linux", find=finder(tcmalloc=TCMALLOC)).library == TCMALLOC
    chosen = allocator.plan("auto", env={}, system="Linux", find=finder())
    assert (chosen.name, chosen.library) == ("system", None)
    assert "apt-get install libjemalloc2" in chosen.reason


def test_auto_never_restarts_a_launched_worker_or_off_linux():
    found = finder(jemalloc=JEMALLOC)
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


def test_restart_only_once_and_only_when_the_library_is_not_mapped_yet():
    chosen = allocator.Plan("jemalloc", JEMALLOC, "")
    libc = "7f-8f r--p 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    assert allocator.needs_reexec(chosen, env={}, maps=libc)
    assert not allocator.needs_reexec(chosen, env={allocator.REEXEC_GUARD: "1"}, maps=libc)  # the loader refused it: no loop
    assert not allocator.needs_reexec(chosen, env={}, maps=libc + f"7f-8f r-xp 0 08:01 2 {JEMALLOC}\n")  # LD_PRELOAD'ed by the user
    assert not allocator.needs_reexec(chosen, env={}, maps=libc + f"7f-8f r-xp 0 08:01 2 {TCMALLOC}\n")  # another one: kept
    assert not allocator.needs_reexec(allocator.Plan("system", None, ""), env={}, maps=libc)


@pytest.mark.skipif(sys.platform != "linux" or INSTALLED is None,
                    reason="jemalloc is not installed (make allocator / apt-get install libjemalloc2)")
def test_cli_train_runs_with_jemalloc_mapped_after_one_restart(tiny_model_dir, chat_rows, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tunewright.cli", "train", "--model", str(tiny_model_dir), "--output", str(run),
           "--data", str(write_jsonl(tmp_path / "train.jsonl", chat_rows[:16])),
           "--set", "train.max_steps=1", "--set", "train.threads=1", "--set", "train.precision=fp32",
           "--set", "eval.after_train=false"]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.REEXEC_GUARD)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((run / "environment.json").read_text())["allocator"]
    assert record["name"] == "jemalloc" and record["library"] == os.path.realpath(INSTALLED)  # mapped in the training process itself
    assert record["reexecs"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["allocator"] == "jemalloc"
    assert done.stderr.count("auto train.allocator = jemalloc") == 1
