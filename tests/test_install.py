"""comp carried into an offline notebook: pip builds a wheel of the project and installs it with --no-index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _pip(*args: str) -> subprocess.CompletedProcess:
    # without PYTHONPATH: pip would take the source tree on it for comp already installed in the venv
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=CLEAN_ENV)


def test_wheel_builds_and_installs_without_the_network(tmp_path):
    src = tmp_path / "src"  # a copy: pip builds in the source folder and would leave build/ and *.egg-info there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT / name, src / name)
    shutil.copytree(PROJECT / "comp", src / "comp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    # --no-index everywhere: neither the build nor the install may reach a package index
    res = _pip("wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(wheels), str(src))
    assert res.returncode == 0, res.stderr
    (wheel,) = wheels.glob("comp-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {
        "comp/inference/bundle_predict.py",
        "comp/inference/_bundle.py",
        "comp/configs/demo.yaml",
    } <= names
    assert "comp = comp.cli:main" in entry and "Requires-Dist: onnxruntime" in meta

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    res = _pip("--python", str(python), "install", "--no-index", "--no-deps", "--find-links", str(wheels), "comp")
    assert res.returncode == 0, res.stderr
    code = "import comp; print(comp.__version__); print(comp.__file__)"
    res = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path, timeout=60
    )
    assert res.returncode == 0, res.stderr
    version, where = res.stdout.split()
    assert version != "0+unknown" and Path(where).is_relative_to(venv)
    assert (venv / "bin" / "comp").is_file()
