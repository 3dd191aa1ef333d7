"""What an installed wheel holds: the example data for `tunewright quickstart`, and no benchmark code."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel of this checkout, built from a copy so the checkout gains no build/ folder."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src / "src", symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "examples" / "stdlib-qa", src / "examples" / "stdlib-qa")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    return next((tmp_path / "dist").glob("tunewright-*.whl"))


def test_the_wheel_ships_the_example_data_and_quickstart_finds_it_without_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in ("train.jsonl", "test.jsonl"):
            assert z.read(f"tunewright/example_data/{name}") == (REPO / "examples" / "stdlib-qa" / name).read_bytes()
        z.extractall(tmp_path / "site")
    assert not any("bench" in n for n in names), "benchmark code belongs in benchmarks/, not in the package"
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    probe = ("import tunewright; from tunewright.quickstart import example_data_dir; "
             "print(tunewright.__file__); print(example_data_dir())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=away, env=env, check=True)
    package_file, data_dir = out.stdout.split()
    assert Path(package_file).is_relative_to(tmp_path / "site")  # the unpacked wheel, not the checkout
    assert Path(data_dir) == (tmp_path / "site" / "tunewright" / "example_data").resolve()
    bench = subprocess.run([sys.executable, "-m", "tunewright.cli", "bench"], capture_output=True, text=True,
                           cwd=away, env=env, check=False)
    assert bench.returncode == 2 and "needs a source checkout" in bench.stderr and "Traceback" not in bench.stderr
