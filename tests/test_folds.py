import numpy as np
import pytest
from conftest import check_no_leak

from comp.data._folds import assign_folds
from comp.errors import CompError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_folds_never_leak_and_cover_every_row(seed):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(60), 7)  # 7 photos per person
    targets = np.repeat(rng.integers(0, 6, 60), 7)
    folds = assign_folds(targets, groups, 5, seed)
    assert folds.shape == targets.shape and set(folds) == set(range(5))
    check_no_leak(folds, groups)
    for k in range(5):  # stratified: every class shows up in every validation fold
        assert set(targets[folds == k]) == set(targets)


def test_folds_are_seeded():
    t = np.arange(100) % 4
    assert (assign_folds(t, None, 5, 3) == assign_folds(t, None, 5, 3)).all()
    assert (assign_folds(t, None, 5, 3) != assign_folds(t, None, 5, 4)).any()


def test_check_no_leak_detects_leak():
    with pytest.raises(AssertionError):
        check_no_leak(np.array([0, 1]), np.array(["a", "a"]))


def test_thin_class_warns_and_too_few_groups_fail():
    targets = np.array([0] * 20 + [1] * 2)
    groups = np.array([f"g{i}" for i in range(20)] + ["x", "x"])
    with pytest.warns(UserWarning, match="class 1: 1"):
        assign_folds(targets, groups, 4, 0)
    with pytest.raises(CompError, match="only 2 groups"):
        assign_folds(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"]), 3, 0)


def _sklearn_folds(y, g, k, seed):
    from sklearn.model_selection import StratifiedGroupKFold

    ref = np.full(len(y), -1)
    for f, (_, valid) in enumerate(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, g)):
        ref[valid] = f
    return ref


@pytest.mark.parametrize(
    ("n", "classes", "n_groups", "k", "skew"),
    [
        (600, 4, 150, 5, False),  # groups of about four
        (400, 3, 400, 5, False),  # one row per group: many exact ties between folds
        (900, 23, 200, 7, True),  # many classes (the mean over classes sums in blocks), skewed
        (300, 2, 60, 3, True),
    ],
)
def test_group_folds_are_sklearns_and_every_group_is_counted(n, classes, n_groups, k, skew):
    from comp.data._folds import _GroupKFold

    rng = np.random.default_rng(n + classes)
    p = np.linspace(1, 8, classes) if skew else np.ones(classes)
    y, g = rng.choice(classes, n, p=p / p.sum()), rng.integers(0, n_groups, n)
    for seed in (0, 3):
        np.testing.assert_array_equal(assign_folds(y, g, k, seed), _sklearn_folds(y, g, k, seed))
    splitter, placed = _GroupKFold(k, shuffle=True, random_state=3), []
    splitter.tick = lambda: placed.append(1)
    list(splitter.split(y, y, g))
    assert len(placed) == len(np.unique(g))
