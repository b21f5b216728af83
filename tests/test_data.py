from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config, write_config
from PIL import Image

from comp.config import load_config
from comp.data._table import load_image, load_train_table
from comp.errors import CompError


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "CMYK", "1"])
def test_any_mode_reads_as_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (10, 12), dtype=np.uint8)
    if mode == "I;16":
        im = Image.fromarray(gray.astype(np.uint16) * 257)
        assert im.mode.startswith("I;16")
    else:
        im = Image.fromarray(gray, "L").convert(mode)
    path = tmp_path / f"x{mode.replace(';', '')}.png" if mode != "CMYK" else tmp_path / "x.jpg"
    im.save(path)
    arr = load_image(path)
    assert arr.shape == (10, 12, 3) and arr.dtype == np.uint8
    if mode in ("L", "I;16", "LA", "RGBA", "P"):
        # grayscale content: all three channels carry it and 16-bit data is scaled, not clipped to white
        assert np.array_equal(arr[..., 0], arr[..., 2])
        assert abs(int(arr[..., 0].astype(int).mean()) - int(gray.mean())) <= 2


def test_rgba_transparent_becomes_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    im.save(tmp_path / "t.png")
    assert (load_image(tmp_path / "t.png") == 255).all()


def test_truncated_image_is_an_error(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompError, match="t.jpg is unreadable"):
        load_image(tmp_path / "t.jpg")


def _cfg(comp_dir, **kw):
    return load_config(write_config(comp_dir, tiny_config(comp_dir, **kw)))


def test_train_table(comp_dir):
    t = load_train_table(_cfg(comp_dir).data)
    assert t.classes == ["c0", "c1", "c2"] and len(t.paths) == len(t.targets) == 36
    assert t.groups is not None and all(p.is_file() for p in t.paths)


def _edit_csv(comp_dir, fn):
    df = pd.read_csv(comp_dir / "train.csv", dtype=str)
    fn(df).to_csv(comp_dir / "train.csv", index=False)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda d: d.assign(id=["g00_0"] * len(d)), "line 3: duplicate id 'g00_0'"),
        (lambda d: d.assign(label=[None] + list(d.label[1:])), "line 2: empty label"),
        (lambda d: d.drop(columns=["person"]), "column 'person' not found"),
        (lambda d: d.assign(id=["../../etc/passwd"] + list(d.id[1:])), "escapes the image folder"),
        (lambda d: d.assign(id=list(d.id[:-1]) + ["nope"]), "line 37: image"),
        (lambda d: d.iloc[:0], "has a header but no rows"),
    ],
)
def test_bad_train_csv(comp_dir, edit, needle):
    _edit_csv(comp_dir, edit)
    with pytest.raises(CompError) as exc:
        load_train_table(_cfg(comp_dir).data)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_empty_csv(comp_dir):
    (comp_dir / "train.csv").write_text("")
    with pytest.raises(CompError, match="is empty"):
        load_train_table(_cfg(comp_dir).data)


def test_path_template_with_subfolders(comp_dir):
    (comp_dir / "train" / "sub").mkdir()
    for p in (comp_dir / "train").glob("*.png"):
        p.rename(comp_dir / "train" / "sub" / p.name)
    t = load_train_table(_cfg(comp_dir, data__path_template="sub/{id}.png").data)
    assert all(p.parent.name == "sub" for p in t.paths)


def test_inside_folds_dots_like_pathlib_and_refuses_escapes():
    """inside() works on strings (pathlib cost 30 s at 500k rows) and decides as pathlib's is_relative_to on the
    normalised path did, for the absolute folders its callers pass."""
    import os

    from comp.data._layout import inside

    def by_pathlib(folder, rel):
        path = Path(os.path.normpath(folder / rel))
        return path if path.is_relative_to(folder) else None

    rels = ["a.png", "x/../a.png", "../a.png", "../../etc/passwd", "/etc/passwd", "./a.png", "a//b.png", ".", "..",
            "x/..", "//x", "///x", "sub/../../train2/a.png", "", "../train/a.png", "../trainx/a", "..a.png", "../.."]  # fmt: skip
    for folder in [Path("/data/train"), Path("/"), Path("/data/train/"), Path("//srv/x")]:
        for rel in rels:
            assert inside(folder, rel) == by_pathlib(folder, rel), (folder, rel)
    assert inside(Path("/data/train"), "../trainx/a.png") is None
    assert inside(Path("."), "../a.png") is None and inside(Path("."), "x/a.png") == Path("x/a.png")
