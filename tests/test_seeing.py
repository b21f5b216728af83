"""Decoded-image cache, bench-data, eda and explain."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from comp.cache import DiskReader, MemoryReader, decode_resized, make_reader
from comp.config import load_config
from comp.data import load_image
from comp.errors import CompError
from tests.conftest import tiny_config, write_config


# -- cache ---------------------------------------------------------------------------
def test_disk_cache_matches_decode_and_hits(comp_dir, tmp_path):
    src = comp_dir / "train" / "g00_0.png"
    expected = decode_resized(src, (16, 20))
    assert expected.shape == (16, 20, 3) and expected.dtype == np.uint8
    reader = make_reader({"cache": "disk", "cache_dir": str(tmp_path / "c"), "image_dir": str(comp_dir / "train")}, (16, 20))
    assert isinstance(reader, DiskReader)
    reader = pickle.loads(pickle.dumps(reader))
    first = reader(src)
    np.testing.assert_array_equal(first, expected)
    entry = reader.entry(src)
    assert entry.is_file()
    # a hit reads the .npy, not the image: corrupt the source bytes but keep mtime and size
    import os
    st = os.stat(src)
    data = src.read_bytes()
    src.write_bytes(b"\0" * len(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    np.testing.assert_array_equal(reader(src), expected)
    with pytest.raises(CompError):
        load_image(src)


def test_disk_cache_default_dir(comp_dir):
    reader = make_reader({"cache": "disk", "image_dir": str(comp_dir / "train")}, (8, 8))
    assert reader.cache_dir == comp_dir / ".comp_cache" / "8x8"


def test_memory_cache_decodes_once(comp_dir, monkeypatch):
    import comp.cache as cache

    calls = []
    real = cache.load_image
    monkeypatch.setattr(cache, "load_image", lambda p: calls.append(p) or real(p))
    reader = make_reader({"cache": "memory", "image_dir": str(comp_dir / "train")}, (12, 12))
    assert isinstance(reader, MemoryReader)
    src = comp_dir / "train" / "g01_0.png"
    a = reader(src)
    b = reader(src)
    assert len(calls) == 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, decode_resized(src, (12, 12)))
    assert pickle.loads(pickle.dumps(reader)).store == {}


def test_bad_cache_mode():
    with pytest.raises(CompError, match="data.cache"):
        make_reader({"cache": "ram", "image_dir": "x"}, (8, 8))


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_train_folds_with_cache(comp_dir, tmp_path, mode):
    from comp.train import train_folds

    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, data__cache=mode, train__max_steps_per_epoch=1)))
    train_folds(cfg, tmp_path / f"run_{mode}", progress=False)
    assert (tmp_path / f"run_{mode}" / "models" / "eff" / "oof.csv").is_file()
    if mode == "disk":
        assert list((comp_dir / ".comp_cache" / "32x32").rglob("*.npy"))


# -- bench-data ----------------------------------------------------------------------
def test_bench_data_cli(config_file):
    from click.testing import CliRunner

    from comp.cli import main

    res = CliRunner().invoke(main, ["bench-data", "--config", str(config_file), "--workers", "0", "--batch-sizes", "4",
                                    "--batches", "2", "--cache", "none,disk,memory"])
    assert res.exit_code == 0, res.output
    assert "bottleneck:" in res.output and "use: --set data.cache=" in res.output
    assert res.output.count("\n") >= 6
    bad = CliRunner().invoke(main, ["bench-data", "--config", str(config_file), "--cache", "ram"])
    assert bad.exit_code == 2 and "--cache" in bad.output
