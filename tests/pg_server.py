"""A real PostgreSQL for tests: initdb + pg_ctl in a temporary data directory, on a loopback port.

`make postgres` installs the Debian packages. PostgreSQL refuses to run as root, so when the tests
run as root the server runs as the `postgres` user the package creates (TUNEWRIGHT_PG_USER names
another). `skip_reason()` says why the tests cannot run here, and they skip with it.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_USER = os.environ.get("TUNEWRIGHT_PG_USER", "postgres")


def bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return Path(versions[-1]).parent if versions else None


def skip_reason() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if bin_dir() is None:
        return "PostgreSQL is not installed (make postgres installs it from the Debian packages)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and there is no '{PG_USER}' user to run PostgreSQL as (make postgres creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """One throwaway cluster; `new_database()` gives each test an empty database. Stop it with `stop()`."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="tunewright-pg-"))  # not under pytest's root-only tmp folders
        self.data, self.port = self.root / "data", _free_port()
        self._databases = 0

    def _as_owner(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_USER, "--", *command]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, cwd=self.root)

    def start(self) -> LocalPostgres:
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        steps = [("initdb", "-D", str(self.data), "-A", "trust", "-U", "tunewright", "--no-sync"),
                 ("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "start",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections=50")]
        for step in steps:
            done = self._as_owner(*step)
            if done.returncode != 0:
                log = (self.root / "postgres.log").read_text() if (self.root / "postgres.log").is_file() else ""
                self.stop()
                raise RuntimeError(f"{step[0]} failed: {done.stdout}{done.stderr}{log}")
        return self

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._databases += 1
        name = f"tunewright{self._databases}"
        with psycopg.connect(f"postgresql://tunewright@127.0.0.1:{self.port}/postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return f"postgresql://tunewright@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            self._as_owner("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
