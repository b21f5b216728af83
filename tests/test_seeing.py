"""Decoded-image cache, bench-data, eda and explain."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from comp.config import DataConfig, load_config
from comp.data._cache import SlabReader, decode_resized, make_reader, slab_bytes
from comp.data._table import load_image
from comp.errors import CompError
from tests.conftest import tiny_config, write_config


# -- cache ---------------------------------------------------------------------------
def _train_paths(comp_dir):
    return sorted((comp_dir / "train").glob("*.png"))


def test_disk_cache_matches_decode_and_hits(comp_dir, tmp_path):
    import os

    paths = _train_paths(comp_dir)
    src = paths[0]
    expected = decode_resized(src, (16, 20))
    assert expected.shape == (16, 20, 3) and expected.dtype == np.uint8
    reader = make_reader(
        DataConfig(**{"cache": "disk", "cache_dir": str(tmp_path / "c"), "image_dir": str(comp_dir / "train")}),
        (16, 20),
        paths,
    )
    assert isinstance(reader, SlabReader) and reader.file.parent == tmp_path / "c"
    assert reader.file.name.startswith("16x20-") and reader.file.stat().st_size == slab_bytes(len(paths), (16, 20))
    reader = pickle.loads(pickle.dumps(reader))  # as a spawned DataLoader worker gets it
    np.testing.assert_array_equal(reader(src), expected)
    assert reader.filled() == 1
    # a hit reads the slab, not the image: corrupt the source bytes but keep mtime and size
    st = os.stat(src)
    data = src.read_bytes()
    src.write_bytes(b"\0" * len(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = reader(src)
    np.testing.assert_array_equal(again, expected)
    again[:] = 0  # callers get a copy: writing into it must not touch the cache
    np.testing.assert_array_equal(reader(src), expected)
    with pytest.raises(CompError):
        load_image(src)
    # a second reader over the same images (the next fold, the next run) starts warm
    warm = make_reader(
        DataConfig(**{"cache": "disk", "cache_dir": str(tmp_path / "c"), "image_dir": "x"}), (16, 20), paths
    )
    assert warm.file == reader.file and warm.filled() == 1


def test_disk_cache_new_slab_when_an_image_changes(comp_dir, tmp_path):
    import os

    paths = _train_paths(comp_dir)
    cfg = DataConfig(cache="disk", cache_dir=str(tmp_path / "c"), image_dir=str(comp_dir / "train"))
    a = make_reader(cfg, (8, 8), paths)
    st = os.stat(paths[3])
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    b = make_reader(cfg, (8, 8), paths)
    c = make_reader(cfg, (8, 9), paths)
    assert len({a.file, b.file, c.file}) == 3


def test_disk_cache_default_dir(comp_dir):
    reader = make_reader(
        DataConfig(**{"cache": "disk", "image_dir": str(comp_dir / "train")}), (8, 8), _train_paths(comp_dir)
    )
    assert reader.file.parent == comp_dir / ".comp_cache"


def test_cache_unflagged_row_is_decoded_again(comp_dir, tmp_path):
    """A process killed between writing a row and setting its flag leaves garbage that is never served."""
    paths = _train_paths(comp_dir)
    reader = make_reader(DataConfig(**{"cache": "disk", "cache_dir": str(tmp_path), "image_dir": "x"}), (8, 8), paths)
    flags, rows = reader.views()
    rows[2] = 255
    np.testing.assert_array_equal(reader(paths[2]), decode_resized(paths[2], (8, 8)))
    assert flags[2] == 1


def test_cache_passes_through_other_paths_and_names_missing_images(comp_dir, tmp_path):
    paths = _train_paths(comp_dir)
    reader = make_reader(
        DataConfig(**{"cache": "disk", "cache_dir": str(tmp_path), "image_dir": "x"}), (8, 8), paths[:3]
    )
    np.testing.assert_array_equal(reader(paths[5]), decode_resized(paths[5], (8, 8)))  # e.g. a test image
    assert reader.filled() == 0
    with pytest.raises(CompError, match="nope.png not found"):
        make_reader(
            DataConfig(**{"cache": "disk", "cache_dir": str(tmp_path), "image_dir": "x"}),
            (8, 8),
            [comp_dir / "nope.png"],
        )


def test_memory_cache_decodes_once_and_is_shared_with_workers(comp_dir, monkeypatch):
    from torch.utils.data import DataLoader

    import comp.data._cache as cache
    from comp.data._table import ImageDataset

    paths = _train_paths(comp_dir)
    reader = make_reader(DataConfig(**{"cache": "memory", "image_dir": str(comp_dir / "train")}), (12, 12), paths)
    assert reader.file.parent == cache._shm_dir() and reader.file in cache._OWNED
    ds = ImageDataset(paths, np.zeros(len(paths), dtype=np.int64), None, reader=reader)
    # epoch 1 in two worker processes fills the slab the parent sees
    assert sum(len(b[0]) for b in DataLoader(ds, batch_size=4, num_workers=2)) == len(paths)
    assert reader.filled() == len(paths)
    expected = [decode_resized(p, (12, 12)) for p in paths]
    calls = []
    real = cache.load_image
    monkeypatch.setattr(cache, "load_image", lambda p: calls.append(p) or real(p))
    for p, e in zip(paths, expected):
        np.testing.assert_array_equal(reader(p), e)
    assert calls == []  # epoch 2 decodes nothing


def test_memory_slab_removed_at_exit_and_stale_ones_cleaned(comp_dir, tmp_path, monkeypatch):
    import subprocess
    import sys

    import comp.data._cache as cache

    code = (
        "import sys; from pathlib import Path; from comp.data._cache import make_reader; from comp.config import DataConfig; "
        "r = make_reader(DataConfig(**{'cache': 'memory', 'image_dir': 'x'}), (8, 8), sorted(Path(sys.argv[1]).glob('*.png'))); "
        "r(r.paths[0]); print(r.file)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(comp_dir / "train")], capture_output=True, text=True, check=True
    )
    slab = Path(out.stdout.strip())
    assert slab.name.startswith("comp-slab-") and not slab.exists()
    monkeypatch.setattr(cache, "_shm_dir", lambda: tmp_path)
    stale = tmp_path / "comp-slab-999999999-8x8-abc.u8"  # from a killed process
    stale.write_bytes(b"x")
    make_reader(DataConfig(**{"cache": "memory", "image_dir": "x"}), (8, 8), _train_paths(comp_dir))
    assert not stale.exists()


def test_cache_without_space_is_a_clear_error(comp_dir, tmp_path, monkeypatch):
    import errno

    import comp.data._cache as cache

    def full(fd, off, n):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full)
    with pytest.raises(CompError, match=r"data.cache=memory needs .*shm-size"):
        make_reader(DataConfig(**{"cache": "memory", "image_dir": "x"}), (8, 8), _train_paths(comp_dir))
    with pytest.raises(CompError, match=r"data.cache=disk needs .* data.cache_dir"):
        make_reader(
            DataConfig(**{"cache": "disk", "cache_dir": str(tmp_path / "c"), "image_dir": "x"}),
            (8, 8),
            _train_paths(comp_dir),
        )
    assert list((tmp_path / "c").iterdir()) == []  # nothing half-made left behind


def test_bad_cache_mode():
    with pytest.raises(CompError, match="data.cache"):
        make_reader(DataConfig(**{"cache": "ram", "image_dir": "x"}), (8, 8))


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_train_folds_with_cache(comp_dir, tmp_path, mode):
    from comp.training._trainer import train_folds

    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, data__cache=mode, train__max_steps_per_epoch=1)))
    train_folds(cfg, tmp_path / f"run_{mode}", progress=False)
    assert (tmp_path / f"run_{mode}" / "models" / "eff" / "oof.csv").is_file()
    if mode == "disk":
        slabs = list((comp_dir / ".comp_cache").glob("32x32-*.u8"))
        assert len(slabs) == 1  # every fold and both models of that size shared one slab


# -- bench-data ----------------------------------------------------------------------
def test_bench_data_cli(config_file):
    from click.testing import CliRunner

    from comp.cli import main

    res = CliRunner().invoke(
        main,
        [
            "bench-data",
            "--config",
            str(config_file),
            "--workers",
            "0",
            "--batch-sizes",
            "4",
            "--batches",
            "2",
            "--cache",
            "none,disk,memory",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "bottleneck:" in res.output and "use: --set data.cache=" in res.output
    assert res.output.count("\n") >= 6
    bad = CliRunner().invoke(main, ["bench-data", "--config", str(config_file), "--cache", "ram"])
    assert bad.exit_code == 2 and "--cache" in bad.output


# -- eda -----------------------------------------------------------------------------
def test_eda_cli(comp_dir, config_file, tmp_path):
    import re
    import shutil

    import pandas as pd
    from click.testing import CliRunner
    from PIL import Image

    from comp.cli import main

    tr = comp_dir / "train"
    shutil.copyfile(tr / "g00_0.png", tr / "g05_1.png")  # across groups p00 / p05: a leak
    shutil.copyfile(tr / "g02_0.png", tr / "g02_1.png")  # within group p02: not a leak
    data = (tr / "g03_0.png").read_bytes()
    (tr / "g03_0.png").write_bytes(data[: len(data) // 2])  # truncated
    gray = np.random.default_rng(1).integers(0, 255, (24, 24), dtype=np.uint8)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tr / "g04_0.png")
    out = tmp_path / "eda"
    res = CliRunner().invoke(main, ["eda", "--config", str(config_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    dups = pd.read_csv(out / "duplicates.csv", dtype=str)
    pair = lambda a, b: dups[((dups.id_a == a) & (dups.id_b == b)) | ((dups.id_a == b) & (dups.id_b == a))]  # noqa: E731
    leak = pair("g00_0", "g05_1")
    assert len(leak) == 1 and leak.iloc[0]["leak"] == "True" and leak.iloc[0]["kind"] == "exact"
    inside = pair("g02_0", "g02_1")
    assert len(inside) == 1 and inside.iloc[0]["leak"] == "False"
    bad = pd.read_csv(out / "unreadable.csv")
    assert list(bad["path"].map(lambda p: p.rsplit("/", 1)[-1])) == ["g03_0.png"]
    assert (
        "1 grayscale stored as RGB" in res.output and "1 unreadable" in res.output and "1 across groups" in res.output
    )
    page = (out / "eda.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert "class_counts.png" in imgs and "group_sizes.png" in imgs and "image_sizes.png" in imgs
    assert all((out / name).is_file() for name in imgs)


def test_eda_joint_labels_and_dhash(tmp_path):
    from comp.diagnostics._eda import dhash, run_eda
    from comp.diagnostics._near import hamming
    from tests.conftest import write_competition

    root = write_competition(tmp_path / "c")
    import pandas as pd

    df = pd.read_csv(root / "train.csv")
    df["label"] = df["label"] + "_" + np.where(np.arange(len(df)) % 2, "a", "b")
    df.to_csv(root / "train.csv", index=False)
    cfg = load_config(write_config(root, tiny_config(root)))
    res = run_eda(cfg, tmp_path / "out")
    assert "label_joint.png" in res.plots and (tmp_path / "out" / "label_joint.png").is_file()
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    h = np.array([dhash(img), dhash(255 - img)], dtype=np.uint64)
    d = hamming(h, h)
    assert d[0, 0] == 0 and d[0, 1] > 20


# -- explain -------------------------------------------------------------------------
def test_mislabel_ranking_and_confusion():
    import pandas as pd

    from comp.diagnostics._explain import confusion, mislabel_ranking

    classes = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 30)
    probs = np.full((30, 3), 0.05)
    probs[np.arange(30), labels] = 0.9
    targets = labels.copy()
    planted = {3: (0.02, 0.95), 11: (0.01, 0.97), 20: (0.04, 0.9)}
    for i, (pl, pp) in planted.items():
        targets[i] = (labels[i] + 1) % 3  # the label is wrong; the model confidently says labels[i]
        probs[i] = 0.0
        probs[i, targets[i]] = pl
        probs[i, labels[i]] = pp
        probs[i, 3 - targets[i] - labels[i]] = 1 - pl - pp
    oof = pd.DataFrame(
        {"id": [f"r{i}" for i in range(30)], "fold": np.arange(30) % 2, "target": np.array(classes)[targets]}
    )
    oof[classes] = probs
    ranked = mislabel_ranking(oof, classes, "id")
    assert list(ranked["id"][:3]) == ["r11", "r3", "r20"]
    assert np.isclose(ranked.loc[0, "margin"], 0.97 - 0.01)
    cm = confusion(oof, classes)
    expected = pd.crosstab(oof["target"], np.array(classes)[probs.argmax(1)]).reindex(
        index=classes, columns=classes, fill_value=0
    )
    np.testing.assert_array_equal(cm, expected.to_numpy())
    assert cm.sum() == 30 and np.trace(cm) == 27


def test_explain_cli_gradcam(trained_run, tmp_path):
    import pandas as pd
    from click.testing import CliRunner
    from PIL import Image

    from comp.cli import main
    from comp.diagnostics._explain import explain_run

    out = tmp_path / "explain"
    res = CliRunner().invoke(
        main, ["explain", str(trained_run), "--top", "3", "--gradcam-ids", "g00_0,g01_1", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "precision" in res.output
    oof = pd.read_csv(trained_run / "models" / "eff" / "oof.csv", dtype={"id": str})
    cm = pd.read_csv(out / "confusion.csv").set_index("label")
    pred = oof[["c0", "c1", "c2"]].to_numpy().argmax(1)
    for (lab, p), n in (
        pd.Series(1, index=pd.MultiIndex.from_arrays([oof["target"], pred])).groupby(level=[0, 1]).sum().items()
    ):
        assert cm.loc[lab, f"c{p}"] == n
    for name in ("confusion.png", "per_class.csv", "mislabeled.csv", "gradcam.png"):
        assert (out / name).is_file()
    result = explain_run(trained_run, "eff", top=2, gradcam_ids=["g02_0"], out_dir=tmp_path / "e2")
    cam = result.cams["g02_0"]
    size = Image.open(trained_run.parent / "comp" / "train" / "g02_0.png").size
    assert cam.shape == (size[1], size[0]) and cam.shape != (32, 32)
    assert 0 <= cam.min() and cam.max() <= 1
    bad = CliRunner().invoke(
        main, ["explain", str(trained_run), "--gradcam-ids", "nope", "--out", str(tmp_path / "e3")]
    )
    assert bad.exit_code == 2 and "nope" in bad.output


def test_gradcam_vit_clear_error():
    import timm
    import torch

    from comp.diagnostics._explain import gradcam

    vit = timm.create_model("test_vit", num_classes=3)
    with pytest.raises(CompError, match="has no spatial feature map; Grad-CAM needs a CNN"):
        gradcam(vit, torch.randn(1, 3, *vit.default_cfg["input_size"][1:]), name="test_vit")


def test_gradcam_channels_last_features():
    """Swin-style models return (B, H, W, C) features; the map must be (H, W), not (W, C)."""
    import timm
    import torch

    from comp.diagnostics._explain import gradcam

    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        num_classes=3,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        img_size=128,
        window_size=2,
    )
    x = torch.randn(1, 3, 128, 128)
    assert swin.forward_features(x).shape == (1, 4, 4, swin.num_features)
    cam, cls = gradcam(swin, x)
    assert cam.shape == (4, 4) and 0 <= cls < 3 and cam.max() <= 1


def test_hamming_matches_bit_count():
    from comp.diagnostics._near import hamming

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 50, dtype=np.uint64)
    b = rng.integers(0, 2**63, 40, dtype=np.uint64)
    ref = np.array([[bin(int(x) ^ int(y)).count("1") for y in b] for x in a])
    np.testing.assert_array_equal(hamming(a, b), ref)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_validation_images_equal_the_eval_pipeline_on_originals(comp_dir, tmp_path, mode):
    """OOF (from the cache) and test predictions (eval pipeline on the file) must see the same pixels."""
    from PIL import Image

    from comp.data._augment import eval_pipeline

    rng = np.random.default_rng(3)
    paths = []
    for i, shape in enumerate([(50, 70, 3), (20, 10, 3), (32, 32, 3)]):  # down, up, same size
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(p)
        paths.append(p)
    tf = eval_pipeline((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    reader = make_reader(
        DataConfig(**{"cache": mode, "cache_dir": str(tmp_path / "c"), "image_dir": "x"}), (32, 32), paths
    )
    for p in paths:
        for _ in range(2):  # the decoding read and the cached read
            np.testing.assert_array_equal(
                tf(image=reader(p))["image"].numpy(), tf(image=load_image(p))["image"].numpy()
            )


def test_explain_defaults_to_the_best_cv_model(tmp_path):
    import json

    from comp.diagnostics._explain import best_model
    from comp.run import RunDir

    run = RunDir(tmp_path)
    for mid, cv, greater in (("a", 0.7, True), ("b", 0.9, True), ("c", None, True)):
        run.model_dir(mid).mkdir(parents=True)
        run.metrics(mid).write_text(json.dumps({"metric": "accuracy", "cv": cv, "greater_is_better": greater}))
    assert best_model(run, ["a", "b", "c"]) == "b"
    run.metrics("a").write_text(json.dumps({"metric": "log_loss", "cv": 0.2, "greater_is_better": False}))
    run.metrics("b").write_text(json.dumps({"metric": "log_loss", "cv": 0.5, "greater_is_better": False}))
    assert best_model(run, ["a", "b"]) == "a"  # log loss: lower is better
    for mid, cv in (("a", 0.5), ("b", 0.2)):  # files that do not say: the metric's own direction
        run.metrics(mid).write_text(json.dumps({"metric": "log_loss", "cv": cv}))
    assert best_model(run, ["a", "b"]) == "b"
    with pytest.raises(CompError, match="no model with all folds trained"):
        best_model(run, ["c"])


def test_gradcam_uses_a_stage_with_resolution_on_small_inputs():
    """At 32 px the last map of a stride-32 CNN is 1x1, a flat heatmap; a 4x4 stage is used instead."""
    import timm
    import torch

    from comp.diagnostics._explain import cam_layer, gradcam

    torch.manual_seed(0)
    model = timm.create_model("test_byobnet", num_classes=3)
    assert cam_layer(model, (32, 32))["module"] == "stages.1"  # reduction 8 -> 4x4
    assert cam_layer(model, (224, 224)) is None  # 7x7 final map: the usual Grad-CAM
    x = torch.randn(1, 3, 32, 32)
    cam, _ = gradcam(model, x)
    assert cam.shape == (4, 4) and cam.max() == 1 and cam.min() < 1  # not flat
    last, _ = gradcam(model, x, layer=None)
    assert last.shape == (1, 1)


def test_memory_cache_evicts_its_older_slabs_when_shm_is_full(comp_dir, tmp_path, monkeypatch):
    """comp tune over image sizes: each trial's size gets a slab; a full /dev/shm drops the earlier ones."""
    import errno

    import comp.data._cache as cache

    monkeypatch.setattr(cache, "_shm_dir", lambda: tmp_path)
    paths = _train_paths(comp_dir)
    old = make_reader(DataConfig(**{"cache": "memory", "image_dir": "x"}), (8, 8), paths)
    real = cache.os.posix_fallocate

    def full_while_old_exists(fd, off, n):
        if old.file.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, off, n)

    monkeypatch.setattr(cache.os, "posix_fallocate", full_while_old_exists)
    new = make_reader(DataConfig(**{"cache": "memory", "image_dir": "x"}), (12, 12), paths)
    assert new.file.exists() and not old.file.exists() and old.file not in cache._OWNED
    np.testing.assert_array_equal(new(paths[0]), decode_resized(paths[0], (12, 12)))
