"""Runs fine-tuning jobs one at a time, each as a `tunewright train` subprocess.

A subprocess (not a thread) so that cancel is a kill, a crash in training cannot take the server
down, and the training run is exactly what the command line would do. The runner turns the run's
`metrics.jsonl` into job events, and on success loads the result into the server so its
`fine_tuned_model` id answers at once. Jobs found running at startup (the server died under them)
are re-queued and resume from their newest complete checkpoint.

The same runner is a `tunewright worker` (jobs_worker.py) on a shared PostgreSQL database: it
claims jobs atomically, beats a heartbeat while one runs, and re-queues the jobs of workers whose
heartbeat went stale; a job then resumes on another worker from its newest checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from ..config import set_key
from .jobs_store import JobStore, now

log = logging.getLogger("tunewright.serve.jobs")
POLL_SECONDS = 0.5
# logged per step by dpo runs, passed on in the metrics events' data
PREFERENCE_METRICS = ("reward_margin", "preference_accuracy", "logps_chosen", "logps_rejected")
STOP_GRACE_SECONDS = 10  # how long a stopped trainer gets to exit on SIGTERM before it is killed
HEARTBEAT_SECONDS = 2.0  # how often a worker says it is alive (and looks for dead workers' jobs)
STALE_AFTER_SECONDS = 60.0  # a running job whose worker has been silent this long is re-queued

# The trainer gets only the environment training needs: never the server's API key or other secrets.
TRAINER_ENV_NAMES = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP", "SHELL",
                     "TERM", "VIRTUAL_ENV", "CONDA_PREFIX", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"}
TRAINER_ENV_PREFIXES = ("LC_", "PYTHON", "XDG_", "LD_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH",
                        "PYTORCH_", "CUDA", "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "ACCELERATE_", "BNB_", "OMP_", "MKL_",
                        "KMP_", "OPENBLAS_", "TUNEWRIGHT_")
TRAINER_ENV_SECRETS = {"TUNEWRIGHT_API_KEY"}

# Linux only: run as `python -c LAUNCHER <server pid> <trainer command...>`. It asks the kernel to send the
# trainer SIGTERM when the thread that started it dies (so even `kill -9` of the server stops training),
# checks the server did not die before that took effect, then becomes the trainer (exec keeps the setting).
LAUNCHER = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit("the server exited before the trainer started")
os.execv(sys.argv[2], sys.argv[2:])
"""


def trainer_env(job_id: str) -> dict[str, str]:
    """The server's environment reduced to what `tunewright train` needs, plus the job id."""
    kept = {k: v for k, v in os.environ.items()
            if (k in TRAINER_ENV_NAMES or k.startswith(TRAINER_ENV_PREFIXES)) and k not in TRAINER_ENV_SECRETS}
    return kept | {"TUNEWRIGHT_JOB_ID": job_id}


def trainer_command(config_path: Path, run_dir: Path, resume: bool, nproc: int = 1) -> list[str]:
    """`tunewright train` for one job (under torchrun with `nproc` > 1), behind the parent-death launcher on Linux."""
    launch = [sys.executable]
    if nproc > 1:  # one process per local device; --standalone picks a free rendezvous port on this machine
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [*launch, "-m", "tunewright.cli", "train", str(config_path), "--output", str(run_dir)]
    if resume:
        command.append("--resume")
    if sys.platform.startswith("linux"):
        return [sys.executable, "-c", LAUNCHER, str(os.getpid()), *command]
    return command


def job_config(job: dict, training_path: str, validation_path: str | None, learning_rate: float | None) -> dict:
    """The run config (YAML) for one job: OpenAI hyperparameters mapped onto tunewright's keys.

    A dpo job trains with objective dpo; its beta (unless auto) becomes preference.beta.
    """
    hp, extras = job["hyperparameters"] or {}, job["extras"] or {}
    config: dict = {"model": job["base_spec"], "method": extras.get("method", "lora"),
                    "data": {"train": training_path}, "train": {"seed": job["seed"]}, "eval": {"after_train": False}}
    if job.get("method_type") == "dpo":
        config["objective"] = "dpo"
        if hp.get("beta", "auto") != "auto":
            config["preference"] = {"beta": hp["beta"]}
    if validation_path:
        config["data"]["validation"] = validation_path
    if hp.get("n_epochs", "auto") != "auto":
        config["train"]["epochs"] = hp["n_epochs"]
    if hp.get("batch_size", "auto") != "auto":
        config["train"]["batch_size"] = hp["batch_size"]
    if learning_rate is not None:
        config["train"]["learning_rate"] = learning_rate
    for dotted, value in (extras.get("settings") or {}).items():
        set_key(config, dotted.split("."), value)
    return config


def fine_tuned_id(job: dict) -> str:
    """The model id a succeeded job is served under, as OpenAI shapes it: ft:BASE:ORG:SUFFIX:ID."""
    base = Path(job["model"]).name if "/" in job["model"] else job["model"]
    if base.startswith("ft:"):  # a job on a fine-tune names the original base, as OpenAI does
        base = base.split(":")[1]
    return f"ft:{base}:tunewright:{job['suffix'] or ''}:{job['id'][-8:]}"


def base_learning_rate(base_spec: str, method: str, objective: str = "sft") -> float:
    """The learning rate `auto` would pick (lower for dpo), so learning_rate_multiplier has something to multiply."""
    from ..models import local_model_dir
    from ..train.hparams import auto_learning_rate

    n_params = 0
    if method == "full":  # only full fine-tuning's default depends on the model size
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(local_model_dir(base_spec)))
        n_params = sum(p.numel() for p in model.parameters())
    return auto_learning_rate(method, n_params, objective)


def _alive(pid: int | None, job_id: str) -> bool:
    """Whether `pid` is still our trainer for this job (and not some recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return job_id in cmdline


def _kill_group(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _error_from_log(log_path: Path) -> str:
    """The CLI's one-line `error:` message if it printed one, else the log's last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "the training process failed before writing a log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else (lines[-1] if lines else "training failed"))[:1000]


class JobRunner:
    """The scheduler thread: claim the oldest queued job, follow it, finish it, repeat.

    `nproc` processes per job (torchrun when more than one); `stale_after` seconds of silence make
    another worker's running job count as dead and go back to the queue.
    """

    def __init__(self, store: JobStore, on_success, nproc: int = 1, stale_after: float = STALE_AFTER_SECONDS) -> None:
        self.store, self.on_success = store, on_success
        self.nproc, self.stale_after = nproc, stale_after
        self.name = f"{socket.gethostname()}:{os.getpid()}"  # in the jobs table, so operators see who runs what
        self.proc: subprocess.Popen | None = None
        self.job_id: str | None = None
        self._lost: str | None = None  # a job the heartbeat found taken from this runner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tunewright-jobs", daemon=True)
        # its own thread, so a slow job start (importing torch under load) never lets the heartbeat go stale
        self._heart = threading.Thread(target=self._beat_loop, name="tunewright-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._heart.start()

    def stop(self) -> None:
        """Stop scheduling; a running trainer is stopped too, and its job resumes when the server starts again."""
        self._stop.set()
        self._thread.join(timeout=STOP_GRACE_SECONDS)
        self._heart.join(timeout=STOP_GRACE_SECONDS)
        if self.proc is None:
            return
        self._stop_trainer()
        job = self.store.job(self.job_id)
        if job is not None and job["status"] == "running":
            self.store.update_job(job["id"], status="queued", pid=None, worker=None)
            who, when = ("worker", "when a worker is free") if self.store.shared else ("server", "when the server starts again")
            self.store.add_event(job["id"], f"The {who} was stopped while this job was running; re-queued, it resumes "
                                 f"from its newest complete checkpoint {when}.", level="warn")
        elif job is not None and job["cancel_requested"]:
            self._finish(job, "cancelled", None)
        self.proc, self.job_id = None, None

    def _stop_trainer(self) -> None:
        """SIGTERM to the trainer's process group, SIGKILL if it has not exited within STOP_GRACE_SECONDS."""
        if self.proc.poll() is not None:
            return
        _kill_group(self.proc.pid)
        try:
            self.proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_GRACE_SECONDS)

    def recover(self) -> None:
        """Jobs marked running belong to a server that died: stop any orphaned trainer and queue them again."""
        for job in self.store.jobs(("running", "validating_files")):
            if _alive(job["pid"], job["id"]):
                _kill_group(job["pid"], signal.SIGKILL)
            self.store.update_job(job["id"], status="queued", pid=None, worker=None)
            self.store.add_event(job["id"], "The server restarted while this job was running; re-queued, "
                                 "resuming from its newest complete checkpoint.", level="warn")

    def cancel(self, job_id: str) -> None:
        self.store.update_job(job_id, cancel_requested=1)
        if self.job_id == job_id and self.proc is not None:
            _kill_group(self.proc.pid)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                if self.proc is None:
                    job = self.store.claim_next(self.name)
                    if job is not None:
                        self._start(job)
                else:
                    self._follow()
            except Exception:  # keep scheduling later jobs whatever one of them does
                log.exception("job runner error")
                if self.job_id:
                    self._finish(self.store.job(self.job_id), "failed", {"code": "internal_error", "message": "job runner error", "param": None})

    def _beat_loop(self) -> None:
        """Every HEARTBEAT_SECONDS: say this runner's job is alive, and re-queue the jobs of runners that went silent."""
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                job_id = self.job_id
                if job_id is not None and not self.store.heartbeat(job_id, self.name):
                    self._lost = job_id
                self._requeue_stale()
            except Exception:  # e.g. the database restarting: beat again next time
                log.exception("heartbeat failed")

    def _requeue_stale(self) -> None:
        """Jobs of workers that stopped beating (killed, machine lost) go back to the queue, once each."""
        for job in self.store.requeue_stale(self.stale_after):
            log.warning("re-queued job %s: its worker was silent for %.0fs", job["id"], self.stale_after)
            self.store.add_event(job["id"], f"The worker running this job stopped responding (no heartbeat for "
                                 f"{self.stale_after:.0f}s); re-queued, it resumes from its newest complete checkpoint.",
                                 level="warn")

    def _abandon(self, job: dict) -> None:
        """The job was given to another worker (this one was silent too long): stop training it here, record nothing."""
        log.warning("job %s is no longer ours (status %s, worker %s): stopping its trainer", job["id"], job["status"], job["worker"])
        self._stop_trainer()
        self.proc, self.job_id = None, None

    def _start(self, job: dict) -> None:
        self.job_id = job["id"]
        root = self.store.root / "ft-jobs"
        run_dir = Path(job["run_dir"] or (root / job["id"])).resolve()
        config_path = root / f"{job['id']}.yaml"
        root.mkdir(parents=True, exist_ok=True)
        resume = _has_checkpoint(run_dir)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # a fresh start needs an empty run folder
        if not config_path.is_file():
            config_path.write_text(yaml.safe_dump(self._config(job)))
        command = trainer_command(config_path, run_dir, resume, self.nproc)
        log_path = root / f"{job['id']}.log"
        with open(log_path, "a") as handle:
            self.proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=trainer_env(job["id"]))
        self.store.update_job(job["id"], started_at=job["started_at"] or now(), run_dir=str(run_dir), pid=self.proc.pid)
        on = f" on {self.name}" if self.store.shared else ""
        self.store.add_event(job["id"], f"Fine-tuning job started{on}" + (" (resuming)" if resume else ""))

    def _config(self, job: dict) -> dict:
        training = self.store.file(job["training_file"])
        validation = self.store.file(job["validation_file"]) if job["validation_file"] else None
        multiplier = (job["hyperparameters"] or {}).get("learning_rate_multiplier", "auto")
        method = (job["extras"] or {}).get("method", "lora")
        objective = "dpo" if job.get("method_type") == "dpo" else "sft"
        lr = None if multiplier == "auto" else float(multiplier) * base_learning_rate(job["base_spec"], method, objective)
        return job_config(job, training["path"], validation["path"] if validation else None, lr)

    def _follow(self) -> None:
        job = self.store.job(self.job_id)
        self._metrics_events(job)
        code = self.proc.poll()
        if code is None:
            if job["cancel_requested"]:  # cancelled while it was being started
                _kill_group(self.proc.pid)
            elif self._lost == job["id"]:
                self._abandon(job)
            return
        job = self.store.job(self.job_id)
        if job["worker"] != self.name and not job["cancel_requested"]:
            self._abandon(job)  # re-queued while this worker was silent: the job's new worker reports it
        elif job["cancel_requested"]:
            self._finish(job, "cancelled", None)
        elif code == 0 and _result_dir(Path(job["run_dir"])):
            self._succeed(job)
        else:
            message = _error_from_log(self.store.root / "ft-jobs" / f"{job['id']}.log")
            self._finish(job, "failed", {"code": "training_failed", "message": message, "param": None})

    def _metrics_events(self, job: dict) -> None:
        """One `metrics` event per new training log step, worded like OpenAI's."""
        from ..train.metrics_log import metrics_path, read_metrics

        rows = read_metrics(metrics_path(job["run_dir"]))
        if not rows:
            return
        last = job["last_step"] or 0
        total = _total_steps(Path(job["run_dir"]))
        for row in rows:
            step = row["step"]
            if step <= last or "loss" not in row:
                continue
            of = f"/{total}" if total else ""
            message = f"Step {step}{of}: training loss={row['loss']:.4f}"
            if row.get("eval_loss") is not None:
                message += f", validation loss={row['eval_loss']:.4f}"
            data = {"step": step, "total_steps": total, "train_loss": row["loss"], "valid_loss": row.get("eval_loss"),
                    "valid_mean_token_accuracy": row.get("eval_token_accuracy"),
                    "learning_rate": row.get("lr"), "tokens": row.get("tokens"),
                    **{k: row[k] for k in PREFERENCE_METRICS if k in row}}
            self.store.add_event(job["id"], message, type="metrics", data=data)
            last = step
        self.store.update_job(job["id"], last_step=last)

    def _succeed(self, job: dict) -> None:
        try:
            self.on_success(job)
        except Exception as exc:
            log.exception("could not load the fine-tuned model")
            self._finish(job, "failed", {"code": "model_load_failed", "message": f"trained, but loading the result failed: {exc}", "param": None})
            return
        self.store.add_event(job["id"], f"New fine-tuned model created: {job['fine_tuned_model']}")
        self.store.update_job(job["id"], trained_tokens=_trained_tokens(Path(job["run_dir"])), fine_tuned_model=job["fine_tuned_model"])
        self._finish(job, "succeeded", None)

    def _finish(self, job: dict, status: str, error: dict | None) -> None:
        updates = {"status": status, "finished_at": now(), "pid": None, "error": error}
        if status != "succeeded":
            updates["fine_tuned_model"] = None
        self.store.update_job(job["id"], **updates)
        message = {"succeeded": "The job has successfully completed", "cancelled": "Job cancelled"}.get(
            status, f"Job failed: {(error or {}).get('message', '')}")
        self.store.add_event(job["id"], message, level="error" if status == "failed" else "info")
        self.proc, self.job_id = None, None


def _has_checkpoint(run_dir: Path) -> bool:
    try:
        from ..train.checkpoint import latest_checkpoint
    except ImportError:
        return False
    return run_dir.is_dir() and latest_checkpoint(run_dir) is not None


def _result_dir(run_dir: Path) -> bool:
    return (run_dir / "adapter" / "adapter_config.json").is_file() or (run_dir / "model" / "config.json").is_file()


def _total_steps(run_dir: Path) -> int | None:
    """The run's optimizer steps, as the trainer counts them, from its resolved config and data report."""
    from ..config import RunConfig
    from ..train.hparams import total_steps

    try:
        cfg = RunConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        examples = json.loads((run_dir / "data_report.json").read_text())["train_examples"] if not cfg.train.max_steps else 0
        return total_steps(cfg, examples)
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):  # not written yet, or being written
        return None


def _trained_tokens(run_dir: Path) -> int | None:
    summary = run_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        for key in ("trained_tokens", "tokens"):
            if isinstance(data.get(key), int):
                return data[key]
    from ..train.metrics_log import metrics_path, read_metrics

    tokens = [r.get("tokens") for r in read_metrics(metrics_path(run_dir)) if isinstance(r.get("tokens"), int)]
    return max(tokens) if tokens else None
