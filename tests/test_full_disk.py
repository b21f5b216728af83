"""Writes that fail because of the machine: a full disk, a quota, a read-only folder. Each is one line naming the
path and the free space (exit 2 from the CLI), never a traceback, and leaves no half-written file or temporary.

The full-disk cases run on a small tmpfs when the test may mount one (root, or a container that allows it);
elsewhere they are skipped, and the translation itself is checked with the errors the kernel and torch raise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config, write_competition, write_config

from comp._files import file_mode, write_error
from comp.cli import main
from comp.errors import CompError
from comp.run import FileSet, atomic_write, torch_save, write_csv


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs, mounted for this test and removed after it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder: Path) -> None:
    """Leave no free byte on ``folder``'s file system."""
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


# ---------------------------------------------------------------- the translation, everywhere


@pytest.mark.parametrize(
    "exc, needle",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4416 vs 4310"), "free"),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "free"),
    ],
    ids=["enospc", "edquot", "erofs", "eacces", "torch-unexpected-pos", "torch-write-failed"],
)
def test_write_errors_become_one_line(tmp_path, exc, needle):
    target = tmp_path / "sub" / "x.csv"

    def fail(_):
        raise exc

    with pytest.raises(CompError) as got:
        atomic_write(target, fail)
    msg = str(got.value)
    assert str(target) in msg and needle in msg and "\n" not in msg
    if isinstance(exc, RuntimeError) or exc.errno in (errno.ENOSPC, errno.EDQUOT):
        assert " free in " in msg
    assert not list(tmp_path.rglob("*.tmp"))
    files = FileSet(tmp_path)
    with pytest.raises(CompError, match="cannot write"):
        files.add(tmp_path / "y.csv", fail)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_bug_keeps_its_traceback(tmp_path):
    assert write_error(tmp_path / "x", RuntimeError("shape mismatch")) is None
    assert write_error(tmp_path / "x", OSError(errno.ENOENT, "gone")) is None
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "x", lambda p: 1 / 0)


# ---------------------------------------------------------------- a real full disk


def test_full_disk_writers(small_disk):
    _fill(small_disk)
    df = pd.DataFrame({"id": np.arange(20000), "p": np.random.default_rng(0).random(20000)})
    with pytest.raises(CompError, match=r"no space left on the device; 0 B free in"):
        write_csv(small_disk / "big.csv", df)
    with pytest.raises(CompError, match="cannot write .*ckpt.pt"):
        torch_save(small_disk / "ckpt.pt", {"w": torch.zeros(200_000)})
    files = FileSet(small_disk)
    with pytest.raises(CompError, match="no space left"):
        files.csv(small_disk / "t.csv", df)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_train_folds_on_a_full_disk_is_one_line_and_resumes(small_disk, tmp_path):
    root = write_competition(tmp_path / "comp")
    path = write_config(root, tiny_config(root))
    run = small_disk / "run"
    result = _invoke("train-folds", "--config", path, "--run-dir", run, "--quiet")
    _one_line(result, "cannot write", "free in")
    (small_disk / "filler").unlink(missing_ok=True)
    shutil.rmtree(run / "models", ignore_errors=True)  # make room: the folds' files are the large ones
    assert not [p for p in run.rglob("*.tmp")], "a temporary of the failed write was left"


def test_predict_submission_on_a_full_disk(trained_run, small_disk, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _fill(small_disk)
    result = _invoke("predict", run, "--engine", "torch", "--out", small_disk / "sub.csv", "--quiet")
    _one_line(result, "sub.csv", "no space left on the device", "free in")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".commit-*"))


# ---------------------------------------------------------------- modes follow the umask


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert file_mode() == 0o666 & ~mask
        write_csv(tmp_path / "a.csv", pd.DataFrame({"x": [1]}))
        with FileSet(tmp_path) as files:
            files.text(tmp_path / "b.txt", "b")
    finally:
        os.umask(old)
    for name in ("a.csv", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name
