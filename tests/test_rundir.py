"""The run folder's typed pieces: checkpoint metadata (today's files included), per-fold names, path resolution."""

from __future__ import annotations

import pytest
import torch

from comp.errors import RunFolderError
from comp.run import CheckpointMeta, RunDir, load_checkpoint, locate, make_checkpoint, model_with


def _meta(**kw) -> CheckpointMeta:
    base = dict(
        model_name="test_resnet",
        model_id="m",
        classes=["a", "b"],
        image_size=(32, 48),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        eval_transform={"transform": {}},
        config={"seed": 1},
    )
    return CheckpointMeta(**{**base, **kw})


def test_checkpoint_meta_round_trips(tmp_path):
    meta = _meta(fold=2, epoch=4, score=0.5, metric="macro_f1")
    torch.save(make_checkpoint({"w": torch.ones(2)}, meta), tmp_path / "fold2.pt")
    ck = load_checkpoint(tmp_path / "fold2.pt")
    assert ck.meta == meta and ck.meta.num_classes == 2 and torch.equal(ck.state_dict["w"], torch.ones(2))


def test_reads_a_checkpoint_written_before_the_typed_reader(tmp_path):
    """Today's files: a flat dict, image_size as a list, no heads key, keys the reader does not know."""
    raw = {
        "format": "comp.checkpoint/1",
        "model_name": "test_resnet",
        "model_id": "m",
        "classes": ["a", "b", "c"],
        "image_size": [32, 32],
        "in_chans": 3,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "eval_transform": {},
        "config": {},
        "entry": {"name": "test_resnet"},
        "fold": 0,
        "epoch": 1,
        "score": 0.25,
        "metric": "accuracy",
        "num_classes": 3,
        "state_dict": {},
        "something_new": 1,
    }
    torch.save(raw, tmp_path / "fold0.pt")
    meta = load_checkpoint(tmp_path / "fold0.pt").meta
    assert meta.image_size == (32, 32) and meta.fold == 0 and meta.heads is None and meta.classes == ["a", "b", "c"]


@pytest.mark.parametrize(
    "raw, needle",
    [({"format": "other"}, "not a comp checkpoint"), ({"format": "comp.checkpoint/1", "state_dict": {}}, "lacks")],
)
def test_a_foreign_or_incomplete_checkpoint_is_refused(tmp_path, raw, needle):
    torch.save(raw, tmp_path / "fold0.pt")
    with pytest.raises(RunFolderError, match=needle):
        load_checkpoint(tmp_path / "fold0.pt")


def test_fold_files_are_named_and_parsed_in_one_place(tmp_path):
    run = RunDir(tmp_path)
    assert [RunDir.fold_number(p) for p in ("fold3.pt", "fold12.onnx", "fold0.oof.csv", "fused.onnx", "foldx.pt")] == [
        3,
        12,
        0,
        None,
        None,
    ]
    folder = run.model_dir("m")
    folder.mkdir(parents=True)
    for name in ("fold10.pt", "fold2.pt", "fold2.state.pt", "fold1.pt", "notes.pt"):
        (folder / name).write_bytes(b"")
    assert list(run.fold_checkpoints("m")) == [1, 2, 10]
    assert run.checkpoints("m") == [folder / "fold1.pt", folder / "fold2.pt", folder / "fold10.pt"]


def test_locate_and_model_with(tmp_path):
    run = RunDir(tmp_path / "run")
    run.model_dir("a").mkdir(parents=True)
    run.model_dir("b").mkdir()
    run.config.write_text("seed: 1\n")
    (run.model_dir("a") / "test.csv").write_text("id,x,y\n1,0.5,0.5\n")
    assert locate(run.root).is_run and locate(run.model_dir("b")).model_id == "b"
    r, mid = model_with(run.root, "test.csv")
    assert r.root == run.root.resolve() and mid == "a"
    with pytest.raises(RunFolderError, match="has no test.csv"):
        model_with(run.model_dir("b"), "test.csv")
    (run.model_dir("b") / "test.csv").write_text("id,x,y\n1,0.5,0.5\n")
    with pytest.raises(RunFolderError, match="holds 2 models with test.csv"):
        model_with(run.root, "test.csv")
    with pytest.raises(RunFolderError, match="neither a run folder"):
        locate(tmp_path)
    with pytest.raises(RunFolderError, match="not found"):
        locate(tmp_path / "nope")


def _text_read(path, id_column="id", oof=True):
    """The reference: every cell read as text, then parsed (what the run folder did before the numeric reader)."""
    from comp.run import read_table
    from comp.run._artifacts import parse_predictions

    return parse_predictions(read_table(path, "OOF file"), path, id_column, oof=oof)


@pytest.mark.parametrize("matrix", [False, True])
def test_prediction_tables_read_as_numbers_equal_the_text_reader_bit_for_bit(tmp_path, matrix):
    import numpy as np

    from comp.run import Predictions

    rng = np.random.default_rng(0)
    n, classes = 300, ["NA", "b", "1e3"]  # class names that look like missing values or numbers stay names
    probs = rng.dirichlet(np.ones(3), n) * 10.0 ** rng.integers(-300, 300, (n, 1))
    probs[0] = [1e-320, 5e-324, 1.7976931348623157e308]  # subnormals and the largest double
    ids = np.array(["NA", "nan", "007", *(f"r{i}" for i in range(n - 3))], dtype=object)
    targets = rng.random((n, 3)) if matrix else np.array(classes, dtype=object)[rng.integers(0, 3, n)]
    run = RunDir(tmp_path / "run")
    run.model_dir("m").mkdir(parents=True)
    run.write_oof("m", Predictions(ids, classes, probs, rng.integers(0, 5, n), targets, "id"))
    got, ref = run.read_oof("m", id_column="id"), _text_read(run.oof("m"))
    from comp.run._io import read_numeric_table

    assert read_numeric_table(run.oof("m"), "OOF file", ("id", "fold", "target"))["b"].dtype == np.float64
    assert got.probs.tobytes() == ref.probs.tobytes() and got.probs.tobytes() == probs.tobytes()
    assert list(got.ids) == list(ref.ids) == list(ids) and got.classes == classes
    np.testing.assert_array_equal(got.folds, ref.folds)
    if matrix:
        assert np.asarray(got.targets).tobytes() == np.asarray(ref.targets).tobytes()
    else:
        assert list(got.targets) == list(ref.targets)


@pytest.mark.parametrize("cell", ["abc", "nan", "inf", "", "1,5"])
def test_a_bad_prediction_cell_gets_the_text_readers_message(tmp_path, cell):
    run = RunDir(tmp_path / "run")
    run.model_dir("m").mkdir(parents=True)
    lines = ["id,fold,target,a,b", "x,0,a,0.5,0.5", f'y,1,b,0.25,"{cell}"', "z,0,a,0.1,0.9"]
    run.oof("m").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunFolderError) as text:
        _text_read(run.oof("m"))
    with pytest.raises(RunFolderError) as numeric:
        run.read_oof("m", id_column="id")
    assert str(numeric.value) == str(text.value) and "line 3" in str(numeric.value)


def test_a_long_csv_is_written_in_chunks_with_the_same_bytes(tmp_path, monkeypatch, caplog):
    """Past CSV_BAR_ROWS rows a table is written chunk by chunk behind a bar: byte for byte what one to_csv wrote
    (header once, quoting, NaN as empty), and the bar's lines name the file."""
    import logging

    import numpy as np
    import pandas as pd

    from comp import _progress
    from comp.run import _io

    monkeypatch.setattr(_io, "CSV_BAR_ROWS", 10)
    monkeypatch.setattr(_io, "CSV_CHUNK", 7)
    monkeypatch.setattr(_progress, "_PLAIN_INTERVAL", 1e-9)  # every update is a log line
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"id": [f"r{i}" for i in range(23)], "label": np.array(['a,"b"', "c", ""])[rng.integers(0, 3, 23)]}
    )
    df["p"] = rng.random(23)
    df.loc[4, "p"] = np.nan
    with caplog.at_level(logging.INFO, logger="comp"):
        _io.write_csv(tmp_path / "long.csv", df)
    df.to_csv(tmp_path / "once.csv", index=False)
    assert (tmp_path / "long.csv").read_bytes() == (tmp_path / "once.csv").read_bytes()
    assert "writing long.csv (rows): 23/23" in caplog.text
