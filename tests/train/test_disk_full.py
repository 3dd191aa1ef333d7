"""A full disk never corrupts a run: tested on a real full filesystem (a small tmpfs).

When a write fails (checkpoint, metrics.jsonl, summary.json, config.yaml, adapter/), the
half-written temporary folder is removed, every earlier checkpoint still verifies, the run stops
with one message and exit code 2, and after freeing space `--resume` ends where an uninterrupted
run ends. Mounting needs root (CI runs as root); elsewhere these tests skip and say why.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_same_adapter, repeat_word_rows, write_jsonl

import tunewright.train.checkpoint as ckpt
from tunewright.config import load_config
from tunewright.errors import UserError
from tunewright.train import train
from tunewright.train.state import TrainState

CLI = [sys.executable, "-m", "tunewright.cli"]
# fp32 and the same dropout in both runs: the resumed run must equal the uninterrupted one
SETS = {"train.max_steps": 6, "train.save_every": 2, "train.eval_every": 2, "train.learning_rate": 1e-2,
        "lora.dropout": 0.3, "train.precision": "fp32", "train.save_total_limit": 5, "train.threads": 1,
        "eval.after_train": "false"}
PAGE = 4096  # tmpfs hands out whole pages



@pytest.fixture
def disk(tmp_path):
    """A real 8 MiB filesystem (tmpfs) at tmp_path/disk, unmounted afterwards whatever happens."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill up needs root (CI runs as root)")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode}): a full disk needs a real filesystem")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _fill(mnt: Path, leave: int) -> Path:
    """A filler file that leaves `leave` bytes free on the filesystem at `mnt`."""
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    assert free > leave, (free, leave)
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (free - leave))
    return filler


def _pages(folder: Path) -> int:
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in folder.rglob("*") if f.is_file())


def _cli(model_dir, data: dict, out: Path, *more) -> list[str]:
    sets = {**SETS, "data.validation": data["validation"]}
    return CLI + ["train", "--model", str(model_dir), "--data", data["train"], "--output", str(out),
                  *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], *more]


def _assert_one_clear_message(out: subprocess.CompletedProcess, what: str, last_good: str, mnt: Path) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("error:") == 1, out.stderr
    text = " ".join(out.stderr.split())  # rich may wrap long lines
    assert f"could not write {what}" in text, text
    assert "ENOSPC" in text and "disk is full" in text, text
    assert f"last good checkpoint: {last_good}" in text, text
    assert f"free space on {mnt}, then run the same command with --resume" in text, text


def test_a_full_disk_mid_run_keeps_every_checkpoint_and_resume_finishes_the_run(tiny_model_dir, tmp_path, disk):
    data = {"train": str(write_jsonl(tmp_path / "train.jsonl", repeat_word_rows(48))),
            "validation": str(write_jsonl(tmp_path / "val.jsonl", repeat_word_rows(8, offset=3)))}
    straight = tmp_path / "straight"
    sets = {**SETS, "data.validation": data["validation"]}
    train(load_config(model=str(tiny_model_dir), data__train=data["train"], output_dir=str(straight),
                      overrides=[f"{k}={v}" for k, v in sets.items()]))
    checkpoint = _pages(straight / "checkpoints" / "step-2")
    assert checkpoint > 40 * PAGE, "the margins below need a checkpoint of some size"
    # room for the small files, checkpoints/step-2 and half of step-4: step-4 cannot be written
    filler = _fill(disk, leave=8 * PAGE + checkpoint + checkpoint // 2)

    run = disk / "run"
    out = subprocess.run(_cli(tiny_model_dir, data, run), check=False, capture_output=True, text=True, timeout=300)
    _assert_one_clear_message(out, str(run / "checkpoints" / "step-4"), str(run / "checkpoints" / "step-2"), disk)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"], "the half-written step-4 is removed"
    assert ckpt.checkpoint_problem(run / "checkpoints" / "step-2") is None
    assert not (run / "adapter").exists()

    filler.unlink()
    resumed = subprocess.run(_cli(tiny_model_dir, data, run, "--resume"), check=False, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_adapter(straight, run)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7)), "each step logged once"
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(128, 128)


def _parts():
    model = _Tiny()
    optimizer = torch.optim.AdamW(model.parameters())
    model.layer.weight.sum().backward()
    optimizer.step()  # optimizer state: state.pt is twice the weights
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def test_save_checkpoint_on_a_full_disk_leaves_no_temporary_folder_and_raises_one_user_error(disk):
    model, optimizer, scheduler = _parts()
    first = ckpt.save_checkpoint(disk, 1, model, optimizer, scheduler, TrainState(step=1))
    filler = _fill(disk, leave=_pages(first) // 2)
    with pytest.raises(UserError) as caught:
        ckpt.save_checkpoint(disk, 2, model, optimizer, scheduler, TrainState(step=2))
    message = str(caught.value)
    assert f"could not write {disk / 'checkpoints' / 'step-2'}" in message, message
    assert "ENOSPC" in message and f"last good checkpoint: {first}" in message, message
    assert caught.value.errno == errno.ENOSPC
    assert [p.name for p in (disk / "checkpoints").iterdir()] == ["step-1"], "no .tmp folder is left"
    assert ckpt.checkpoint_problem(first) is None
    filler.unlink()
    assert ckpt.checkpoint_problem(ckpt.save_checkpoint(disk, 2, model, optimizer, scheduler, TrainState(step=2))) is None


def test_a_full_disk_while_saving_the_adapter_leaves_none_half_written_and_keeps_the_old_one(tiny_model_dir, tmp_path, disk):
    from tunewright.models import load_model, load_tokenizer
    from tunewright.train.methods import apply_method
    from tunewright.train.run import save_result

    cfg = load_config(model=str(tiny_model_dir), data__train=str(tmp_path / "unused.jsonl"), output_dir=str(disk / "run"))
    model = apply_method(load_model(str(tiny_model_dir)), cfg)
    tokenizer = load_tokenizer(str(tiny_model_dir), None, False)
    run = disk / "run"
    run.mkdir()
    filler = _fill(disk, leave=4 * PAGE)
    with pytest.raises(UserError, match="could not write .*adapter.*ENOSPC"):
        save_result(model, tokenizer, cfg, run, str(tiny_model_dir))
    assert sorted(p.name for p in run.iterdir()) == [], "no adapter/ and no temporary folder: nothing for PEFT to half-load"

    filler.unlink()
    save_result(model, tokenizer, cfg, run, str(tiny_model_dir))
    before = {p.relative_to(run): p.read_bytes() for p in (run / "adapter").rglob("*") if p.is_file()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(1.0)  # a newer result, which the full disk will refuse
    filler = _fill(disk, leave=4 * PAGE)
    with pytest.raises(UserError, match="ENOSPC"):
        save_result(model, tokenizer, cfg, run, str(tiny_model_dir))
    assert sorted(p.name for p in run.iterdir()) == ["adapter"]
    after = {p.relative_to(run): p.read_bytes() for p in (run / "adapter").rglob("*") if p.is_file()}
    assert after == before, "the adapter already there is untouched"
