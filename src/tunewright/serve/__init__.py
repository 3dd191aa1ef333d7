"""Step 7, deploy: an OpenAI-compatible server for runs, adapters and models (FastAPI + uvicorn)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass

from ..errors import UserError

ENGINES = ("torch", "vllm")

__all__ = ["ENGINES", "Server", "build_app", "serve"]


def _check_port(host: str, port: int) -> None:
    """Fail with one clear line before loading any model when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror})", "pick another --port, or stop what is using it") from None


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise UserError(f"unknown --engine '{engine}'", f"use one of: {', '.join(ENGINES)}")
    if engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError("--engine vllm needs vLLM, which is not installed", "pip install vllm (Linux + CUDA), or use --engine torch")
        raise UserError("--engine vllm is not wired up in this version", "use --engine torch, or run `vllm serve BASE --enable-lora` yourself")


def _check_runs_dir(runs_dir: str | None) -> None:
    if runs_dir is not None and not os.path.isdir(runs_dir):
        raise UserError(f"--runs {runs_dir}: no such folder", "pass the folder that holds your run folders, e.g. --runs runs/")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ShutdownRequested(BaseException):
    """SIGTERM or SIGINT arrived: unwind to `serve()`'s cleanup, which stops the trainer and requeues its job."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_shutdown(signum: int, frame) -> None:
    raise ShutdownRequested(signum)


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGTERM/SIGINT into ShutdownRequested for the whole life of the server.

    uvicorn handles these signals while it serves, then restores the previous handlers and raises the
    signal again. With the default SIGTERM handler that re-raise killed the process on the spot, so
    no cleanup ran and the trainer was orphaned; with this handler the re-raise unwinds normally.
    """
    previous = {sig: signal.signal(sig, _raise_shutdown) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _close_ignoring_signals(server: Server) -> None:
    """Cleanup is bounded (the trainer gets 10 s, then SIGKILL); a second Ctrl-C must not cut it short."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    server.close()


@dataclass
class Server:
    """Everything `serve` starts: the app, the models, the batching worker, the jobs service."""

    app: object
    registry: object
    engine: object
    jobs: object | None

    def close(self) -> None:
        if self.jobs is not None:
            self.jobs.close()
        self.engine.stop()


def build_app(models: list[str], api_key: str | None = None, database: str | None = None, max_batch_size: int = 16,
              runs_dir: str | None = None, storage: str | None = None) -> Server:
    """Load every model, start the batching worker and the jobs runner, and build the app.

    The fine-tuning jobs API is on unless TUNEWRIGHT_JOBS=0 (its state goes to `database`,
    default sqlite:///runs/tunewright.db relative to the working directory; uploads and job runs go
    under `storage`, default beside a SQLite database, ./runs with PostgreSQL). `runs_dir` is listed,
    read-only, by the dashboard and `GET /v1/runs`.
    """
    from .app import create_app
    from .engine import Engine
    from .registry import BASE_ADAPTER, Registry

    if not models:
        raise UserError("serve needs at least one run folder or model", "tunewright serve runs/my-run")
    registry = Registry()
    for spec in models:
        served = registry.add(spec)
        on = f" (adapter on {served.base})" if served.adapter not in (None, BASE_ADAPTER) else ""
        print(f"loaded {served.id}{on}", file=sys.stderr)
    engine = Engine(max_batch_size=max_batch_size)
    engine.start()
    jobs = None
    if os.environ.get("TUNEWRIGHT_JOBS", "1") != "0":
        from .jobs import JobsService

        jobs = JobsService.open(database, registry, engine, storage=storage)
    return Server(create_app(registry, engine, api_key=api_key, jobs=jobs, runs_dir=runs_dir), registry, engine, jobs)


def serve(models: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          database: str | None = None, max_batch_size: int = 16, engine: str = "torch", runs_dir: str | None = None,
          storage: str | None = None) -> None:
    """Serve `models` with an OpenAI-compatible API until interrupted."""
    import uvicorn

    _check_engine(engine)
    _check_port(host, port)
    _check_runs_dir(runs_dir)
    api_key = api_key or os.environ.get("TUNEWRIGHT_API_KEY") or None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the models",
              file=sys.stderr)
    with _stop_on_signals():
        try:
            server = build_app(models, api_key=api_key, database=database, max_batch_size=max_batch_size, runs_dir=runs_dir,
                               storage=storage)
        except ShutdownRequested:
            return
        print(f"serving {', '.join(server.registry.ids())} at http://{host}:{port}/v1; dashboard at http://{host}:{port}/",
              file=sys.stderr)
        try:
            uvicorn.run(server.app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
        except ShutdownRequested as stop:
            print(f"{stop}: stopping", file=sys.stderr)
        finally:
            _close_ignoring_signals(server)
