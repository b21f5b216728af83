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


def test_group_folds_are_sklearns_and_every_group_is_counted():
    from sklearn.model_selection import StratifiedGroupKFold

    from comp.data._folds import _GroupKFold

    rng = np.random.default_rng(4)
    y, g = rng.integers(0, 4, 600), rng.integers(0, 150, 600)
    ref = np.full(len(y), -1)
    for k, (_, valid) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=3).split(y, y, g)):
        ref[valid] = k
    np.testing.assert_array_equal(assign_folds(y, g, 5, 3), ref)
    splitter, placed = _GroupKFold(5, shuffle=True, random_state=3), []
    splitter.tick = lambda: placed.append(1)
    list(splitter.split(y, y, g))
    assert len(placed) == len(np.unique(g))
