"""Read-only inputs, as /kaggle/input: every command works and nothing is written beside the images.

Tests run as root, who may write into a folder whatever its mode, so a folder is made read-only with
chmod and each test asserts that no file appeared in it rather than relying on the permission error.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from comp.cli import main
from comp.config import DataConfig, load_config
from comp.data._cache import disk_cache_dir, make_reader, writable
from comp.errors import ConfigError
from comp.training import train_folds
from tests.conftest import chmod_tree, snapshot, tiny_config, write_competition, write_config


@pytest.fixture
def read_only(tmp_path):
    """Make folders read-only for the test; their write bits come back afterwards so tmp_path can be removed."""
    folders: list[Path] = []

    def make(folder: Path) -> Path:
        chmod_tree(folder, writable=False)
        folders.append(folder)
        return folder

    yield make
    for folder in folders:
        chmod_tree(folder, writable=True)


@pytest.fixture
def tmpdir_at(tmp_path, monkeypatch):
    """Point $TMPDIR (what tempfile.gettempdir() answers) at a fresh folder of this test."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_writable_sees_read_only_folders_and_their_missing_children(tmp_path, read_only):
    ro = tmp_path / "ro"
    (ro / "inner").mkdir(parents=True)
    assert writable(ro) and writable(ro / "new" / "deeper")
    read_only(ro)
    assert not writable(ro) and not writable(ro / "inner") and not writable(ro / "new" / "deeper")
    assert writable(tmp_path / "elsewhere")
    (tmp_path / "file").write_text("x")
    assert not writable(tmp_path / "file") and not writable(tmp_path / "file" / "below")


def test_disk_cache_falls_back_to_tmpdir_then_the_run_folder(tmp_path, read_only, tmpdir_at, caplog):
    comp = write_competition(tmp_path / "input" / "comp", n_groups=3, n_test=1)
    data = DataConfig(image_dir=str(comp / "train"), cache="disk")
    assert disk_cache_dir(data) == comp / ".comp_cache"  # writable: beside the images, shared by every run
    read_only(comp)
    with caplog.at_level(logging.WARNING, logger="comp"):
        assert disk_cache_dir(data, tmp_path / "run") == tmpdir_at / "comp-cache"
    assert f"{comp} is read-only; caching decoded images in {tmpdir_at / 'comp-cache'}" in caplog.text
    read_only(tmpdir_at)
    assert disk_cache_dir(data, tmp_path / "run") == tmp_path / "run" / "cache"
    before = snapshot(comp)
    reader = make_reader(data, (8, 8), sorted((comp / "train").glob("*.png")), run_dir=tmp_path / "run")
    reader(reader.paths[0])
    assert reader.file.parent == tmp_path / "run" / "cache" and reader.filled() == 1
    assert snapshot(comp) == before


def test_unwritable_cache_dir_fails_before_the_run_folder_is_written(tmp_path, read_only):
    comp = write_competition(tmp_path / "comp", n_groups=6, n_test=1)
    (tmp_path / "ro").mkdir()
    ro = read_only(tmp_path / "ro")  # data.cache_dir does not exist yet: its nearest parent decides
    cfg = load_config(tiny_config(comp, data__cache="disk", data__cache_dir=str(ro / "cache")), base_dir=comp)
    with pytest.raises(ConfigError, match="data.cache_dir .* is not writable"):
        train_folds(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


TRAIN = ["train-folds", "--config", "exp.yaml", "--run-dir", "runs/exp", "--quiet"]
QUICK = [
    ["predict", "runs/exp", "--tta", "hflip", "--quiet"],
    ["bundle", "runs/exp", "--out", "bundle", "--tta", "hflip", "--quiet"],
    ["ensemble", "runs/exp/models/eff", "--method", "mean", "--name", "blend"],
    ["eda", "--config", "exp.yaml", "--out", "eda"],
    ["explain", "runs/exp", "--top", "2"],
]
SLOW = [
    ["export", "runs/exp", "--fuse", "--quiet"],
    ["bench-data", "--config", "exp.yaml", "--workers", "0", "--batches", "1", "--cache", "none,disk"],
    [
        "tune",
        "--config",
        "exp.yaml",
        "--n-trials",
        "1",
        "--folds",
        "0",
        "--epochs",
        "1",
        "--out",
        "tune",
        "--quiet",
    ],
]


def _commands_on_read_only_data(tmp_path: Path, read_only, monkeypatch, commands: list[list[str]]) -> Path:
    """Run comp commands from a working folder on a read-only competition folder; nothing may appear in it."""
    comp = write_competition(tmp_path / "input" / "comp")
    work = tmp_path / "working"
    work.mkdir()
    cfg = tiny_config(comp, data__cache="disk", train__max_steps_per_epoch=2)
    paths = ("train_csv", "image_dir", "test_image_dir", "sample_submission")
    cfg["data"] = {k: str(comp / v) if k in paths else v for k, v in cfg["data"].items()}
    cfg["tune"] = {"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    write_config(work, cfg)
    monkeypatch.chdir(work)
    read_only(comp)
    before = snapshot(comp)
    for args in [TRAIN, *commands]:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, f"comp {' '.join(args)}: {res.output}"
    assert snapshot(comp) == before, "a command wrote into the read-only competition folder"
    return work


def test_commands_with_a_read_only_competition_folder(tmp_path, read_only, tmpdir_at, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="comp"):
        work = _commands_on_read_only_data(tmp_path, read_only, monkeypatch, QUICK)
    assert "is read-only; caching decoded images in" in caplog.text
    assert list((tmpdir_at / "comp-cache").glob("32x32-*.u8")), "the disk cache did not fall back to $TMPDIR"
    assert (work / "bundle" / "manifest.json").is_file() and (work / "runs" / "blend").is_dir()


@pytest.mark.slow
def test_slower_commands_with_a_read_only_competition_folder(tmp_path, read_only, tmpdir_at, monkeypatch):
    work = _commands_on_read_only_data(tmp_path, read_only, monkeypatch, SLOW)
    assert (work / "runs" / "exp" / "models" / "eff" / "fused.onnx").is_file() and (work / "tune").is_dir()
