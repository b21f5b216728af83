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


# ---------------------------------------------------------------- other tasks: the sample decides the format


def _sample(tmp_path, columns: dict) -> str:
    path = tmp_path / f"sample_{'_'.join(columns)}.csv"
    pd.DataFrame({"id": ["a", "b", "c"], **columns}).to_csv(path, index=False)
    return str(path)


def test_multilabel_tags_use_fitted_thresholds_and_wide_samples_get_probabilities(tmp_path):
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1], [0.4, 0.8, 0.35]])
    labels = ["cloudy", "haze", "road"]
    tags = _sample(tmp_path, {"tags": ["x", "y", "z"]})
    sub = make_submission(["c", "b", "a"], probs, labels, tags, "id", task="multilabel")
    by_id = dict(zip(sub["id"], sub["tags"]))
    assert by_id == {"c": "cloudy road", "b": "", "a": "haze"}  # 0.5 without a decision; an image may have none
    fitted = make_submission(
        ["a", "b", "c"], probs, labels, tags, "id", task="multilabel", decision={"thresholds": [0.95, 0.15, 0.3]}
    )
    assert fitted["tags"].tolist() == ["haze road", "", "haze road"]
    validate_submission(fitted, tags, labels, "id", task="multilabel")
    wide = _sample(tmp_path, {"road": [0] * 3, "cloudy": [0] * 3, "haze": [0] * 3})
    sub = make_submission(["a", "b", "c"], probs, labels, wide, "id", task="multilabel")
    assert list(sub.columns) == ["id", "road", "cloudy", "haze"] and sub["road"].tolist() == [0.6, 0.1, 0.35]
    bad = fitted.assign(tags=["haze roads", "", ""])
    with pytest.raises(CompError, match="tag 'roads'"):
        validate_submission(bad, tags, labels, "id", task="multilabel")


def test_regression_values_and_qwk_grades(tmp_path):
    values = np.array([[1.2], [3.7], [2.4]])
    one = _sample(tmp_path, {"Pawpularity": [0, 0, 0]})  # one column for one target, whatever its name
    sub = make_submission(["a", "b", "c"], values, ["score"], one, "id", task="regression")
    assert sub["Pawpularity"].tolist() == [1.2, 3.7, 2.4]
    graded = make_submission(
        ["a", "b", "c"],
        values,
        ["score"],
        one,
        "id",
        task="regression",
        decision={"cutpoints": [0.5, 1.5, 2.5, 3.5], "grades": [0.0, 1.0, 2.0, 3.0, 4.0]},
    )
    assert graded["Pawpularity"].tolist() == [1, 4, 2] and graded["Pawpularity"].dtype.kind == "i"
    two = _sample(tmp_path, {"green": [0] * 3, "red": [0] * 3})
    sub = make_submission(
        ["a", "b", "c"], np.array([[1, 10], [2, 20], [3, 30]]), ["red", "green"], two, "id", task="regression"
    )
    assert sub["red"].tolist() == [1, 2, 3] and sub["green"].tolist() == [10, 20, 30]
    validate_submission(sub, two, ["red", "green"], "id", task="regression")
    with pytest.raises(CompError, match="not finite numbers"):
        validate_submission(sub.assign(red=["1", "x", "3"]), two, ["red", "green"], "id", task="regression")


@pytest.mark.parametrize(
    "task, columns, classes, needle",
    [
        ("regression", {"a1": [0] * 3, "a2": [0] * 3}, ["red", "green"], "not the regression's targets"),
        ("multilabel", {"x": [0] * 3, "y": [0] * 3}, ["r", "g", "b"], "neither one tags column"),
    ],
)
def test_a_sample_that_fits_no_task_format_is_refused(tmp_path, task, columns, classes, needle):
    sample = _sample(tmp_path, columns)
    with pytest.raises(CompError, match=needle):
        make_submission(["a", "b", "c"], np.zeros((3, len(classes))), classes, sample, "id", task=task)
