"""Submission formatting and validation against sample_submission.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from comp.errors import CompError
from comp.submission._format import make_submission, validate_submission, write_submission

CLASSES = [str(i) for i in range(10)]


def write_sample(path, ids, columns):
    df = pd.DataFrame({"image_id": ids})
    for c in columns:
        df[c] = "0"
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    ids = ["007", "a12", "b3", "010", "c9"]
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(ids))
    return ids, probs


def test_label_submission_follows_sample_order_and_keeps_int_like_labels(tmp_path, preds):
    ids, probs = preds
    sample = write_sample(tmp_path / "sample.csv", ["c9", "007", "010", "b3", "a12"], ["label"])
    df = make_submission(ids, probs, CLASSES, sample)
    assert list(df.columns) == ["image_id", "label"]
    assert list(df["image_id"]) == ["c9", "007", "010", "b3", "a12"]
    by_id = dict(zip(ids, probs.argmax(1)))
    assert list(df["label"]) == [CLASSES[by_id[i]] for i in df["image_id"]]
    out = write_submission(df, tmp_path / "sub" / "s.csv", sample, CLASSES)
    text = out.read_text().splitlines()
    assert text[0] == "image_id,label"
    assert text[2].startswith("007,")  # leading zeros survive the round trip
    back = pd.read_csv(out, dtype=str)
    assert list(back["label"]) == list(df["label"])


def test_probability_submission_uses_sample_column_order(tmp_path, preds):
    ids, probs = preds
    cols = CLASSES[::-1]
    sample = write_sample(tmp_path / "sample.csv", ids[::-1], cols)
    df = make_submission(ids, probs, CLASSES, sample)
    assert list(df.columns) == ["image_id"] + cols
    row = df.set_index("image_id").loc["b3"]
    np.testing.assert_allclose(row[CLASSES].to_numpy(float), probs[ids.index("b3")])
    write_submission(df, tmp_path / "p.csv", sample, CLASSES)
    back = pd.read_csv(tmp_path / "p.csv", dtype={"image_id": str})
    np.testing.assert_allclose(back[cols].to_numpy(), df[cols].to_numpy())


def test_id_column_option_picks_a_non_first_column(tmp_path, preds):
    ids, probs = preds
    pd.DataFrame({"label": ["0"] * 5, "image_id": ids}).to_csv(tmp_path / "s.csv", index=False)
    df = make_submission(ids, probs, CLASSES, tmp_path / "s.csv", id_column="image_id")
    assert list(df.columns) == ["label", "image_id"]
    validate_submission(df, tmp_path / "s.csv", CLASSES, id_column="image_id")


def test_make_submission_refuses_missing_ids(tmp_path, preds):
    ids, probs = preds
    sample = write_sample(tmp_path / "sample.csv", ids + ["zz"], ["label"])
    with pytest.raises(CompError, match="lack 1 .*'zz'"):
        make_submission(ids, probs, CLASSES, sample)


def test_make_submission_refuses_unmatched_columns(tmp_path, preds):
    ids, probs = preds
    sample = write_sample(tmp_path / "sample.csv", ids, ["a", "b"])
    with pytest.raises(CompError, match="neither one label column"):
        make_submission(ids, probs, CLASSES, sample)


BREAKERS = {
    "missing id": (lambda df: df.iloc[1:], "1 ids of sample.csv are missing \\(first: 'c9'\\)"),
    "extra id": (lambda df: pd.concat([df, pd.DataFrame({"image_id": ["x1"], "label": ["3"]})]), "1 ids not in .*'x1'"),
    "swapped rows": (lambda df: df.iloc[[1, 0, 2, 3, 4]], "row 1 has id '007' where sample.csv has 'c9'"),
    "duplicate id": (lambda df: df.assign(image_id=["c9", "c9", "010", "b3", "a12"]), "'c9' appears twice"),
    "nan": (
        lambda df: df.assign(label=[None, "1", "2", "3", "4"]),
        "1 empty values \\(first: row 1, column 'label'\\)",
    ),
    "unknown label": (
        lambda df: df.assign(label=["cat", "1", "2", "3", "4"]),
        "not among the classes \\(first: 'cat'\\)",
    ),
    "wrong columns": (lambda df: df.rename(columns={"label": "target"}), "columns .* differ from sample.csv's"),
    "column order": (lambda df: df[["label", "image_id"]], "differ from"),
}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_label_failures_raise_and_write_nothing(tmp_path, preds, case):
    ids, probs = preds
    sample = write_sample(tmp_path / "sample.csv", ["c9", "007", "010", "b3", "a12"], ["label"])
    good = make_submission(ids, probs, CLASSES, sample)
    validate_submission(good, sample, CLASSES)
    breaker, message = BREAKERS[case]
    target = tmp_path / "out.csv"
    with pytest.raises(CompError, match=message) as info:
        write_submission(breaker(good), target, sample, CLASSES)
    assert "\n" not in str(info.value)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [sample]  # no temporary file left behind


@pytest.mark.parametrize("value, message", [(1.5, "outside \\[0, 1\\]"), (np.nan, "empty values"), (-0.1, "outside")])
def test_probability_failures_raise_and_write_nothing(tmp_path, preds, value, message):
    ids, probs = preds
    sample = write_sample(tmp_path / "sample.csv", ids, CLASSES)
    df = make_submission(ids, probs, CLASSES, sample)
    df.loc[2, "4"] = value
    with pytest.raises(CompError, match=message):
        write_submission(df, tmp_path / "out.csv", sample, CLASSES)
    assert not (tmp_path / "out.csv").exists()


def test_several_problems_are_reported_on_one_line(tmp_path, preds):
    ids, probs = preds
    sample = write_sample(tmp_path / "sample.csv", ids, ["label"])
    df = make_submission(ids, probs, CLASSES, sample).iloc[1:].copy()
    df.iloc[0, 1] = "cat"
    with pytest.raises(CompError) as info:
        validate_submission(df, sample, CLASSES)
    msg = str(info.value)
    assert "missing" in msg and "'cat'" in msg and "\n" not in msg
