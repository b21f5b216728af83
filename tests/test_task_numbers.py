"""The numbers of the task types, on tiny hand-built arrays: scores, fitted decisions, folds that keep groups."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from sklearn import metrics as skm

from comp.data._stratify import multilabel_group_folds, regression_key
from comp.tasks._decisions import (
    apply_cutpoints,
    apply_thresholds,
    fbeta_multilabel,
    fit_cutpoints,
    fit_thresholds,
    quadratic_kappa,
)
from comp.tasks._scores import mean_auc, mean_average_precision, mean_log_loss, partial_auc, r2, rmse, rmsle


def _isic_pauc(y, s, min_tpr=0.8):
    """The skin-lesion competition's own conversion from sklearn's McClish-standardised value."""
    v_gt, v_pred, max_fpr = np.abs(np.asarray(y) - 1), -np.asarray(s), abs(1 - min_tpr)
    scaled = skm.roc_auc_score(v_gt, v_pred, max_fpr=max_fpr)
    return 0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5)


def test_partial_auc_by_hand():
    # positives score 0.9, 0.8, 0.3; negatives 0.7, 0.2. ROC vertices (fpr, tpr): (0,0) (0,1/3) (0,2/3) (.5,2/3)
    # (.5,1) (1,1). Above TPR 0.5: from fpr 0 to .5 the curve sits at 2/3 (area .5 * 1/6), then at 1 (area .5 * .5)
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.8, 0.3, 0.7, 0.2]
    assert partial_auc(y, s, 0.5) == pytest.approx(0.5 / 6 + 0.25)
    assert partial_auc(y, s, 0.0) == pytest.approx(skm.roc_auc_score(y, s))
    perfect = [0.9, 0.8, 0.7, 0.2, 0.1]
    assert partial_auc(y, perfect, 0.8) == pytest.approx(0.2)  # the best possible: 1 - min_tpr


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_tpr", [0.8, 0.6])
def test_partial_auc_matches_the_competition_formula(seed, min_tpr):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    s = y * rng.uniform(0.3, 1.5) + rng.normal(size=400)
    assert partial_auc(y, s, min_tpr) == pytest.approx(_isic_pauc(y, s, min_tpr), abs=1e-12)


def test_multilabel_scores_skip_labels_without_both_classes():
    Y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 0, 0]])
    P = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.8], [0.6, 0.2, 0.4], [0.1, 0.9, 0.3]])
    # label 1 has no positive row: left out; label 0 ranks perfectly; label 2: positives .8 and .4 vs .2 and .3
    assert mean_auc(Y, P) == pytest.approx((1.0 + 1.0) / 2)
    assert mean_average_precision(Y, P) == pytest.approx(np.mean([1.0, 1.0]))
    ll = -np.mean([np.mean(np.log(np.where(Y[:, j] == 1, P[:, j], 1 - P[:, j]))) for j in range(3)])
    assert mean_log_loss(Y, P) == pytest.approx(ll)


def test_fbeta_averages_and_empty_rows():
    Y = np.array([[1, 0], [0, 0], [1, 1]])
    B = np.array([[1, 1], [0, 0], [0, 1]])
    # samples: row0 tp1 fp1 -> 2/3; row1 empty/empty -> 1; row2 tp1 fn1 -> 2/3
    assert fbeta_multilabel(Y, B, 1.0, "samples") == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert fbeta_multilabel(Y, B, 1.0, "micro") == pytest.approx(skm.f1_score(Y, B, average="micro"))
    assert fbeta_multilabel(Y, B, 2.0, "macro") == pytest.approx(skm.fbeta_score(Y, B, beta=2, average="macro"))


@pytest.mark.parametrize("average", ["samples", "micro", "macro"])
def test_fitted_thresholds_beat_one_half_and_are_searched_exactly(average):
    rng = np.random.default_rng(3)
    Y = rng.random((300, 4)) < [0.5, 0.2, 0.1, 0.05]
    P = np.clip(0.35 * Y + rng.random((300, 4)) * 0.5, 0, 1)  # informative but badly calibrated: 0.5 is wrong
    t = fit_thresholds(Y, P, beta=2.0, average=average)
    fitted = fbeta_multilabel(Y, apply_thresholds(P, t), 2.0, average)
    assert fitted > fbeta_multilabel(Y, P >= 0.5, 2.0, average) + 0.02
    if average == "macro":  # labels are independent there: each threshold is the best one of the grid
        from comp.tasks._decisions import THRESHOLD_GRID

        for j in range(4):
            best = max(fbeta_multilabel(Y[:, [j]], P[:, [j]] >= g, 2.0, "macro") for g in THRESHOLD_GRID)
            assert fbeta_multilabel(Y[:, [j]], P[:, [j]] >= t[j], 2.0, "macro") == pytest.approx(best)


def test_quadratic_kappa_matches_sklearn_and_cutpoints_fit():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    p = y * 0.6 + 0.7 + rng.normal(scale=0.4, size=500)  # a shrunk, shifted regressor: rounding is poor
    grades = np.arange(5)
    rounded = np.clip(np.rint(p), 0, 4)
    assert quadratic_kappa(y, rounded, grades) == pytest.approx(skm.cohen_kappa_score(y, rounded, weights="quadratic"))
    cuts, found = fit_cutpoints(y, p)
    assert list(found) == [0, 1, 2, 3, 4] and np.all(np.diff(cuts) > 0)
    fitted = quadratic_kappa(y, apply_cutpoints(p, cuts, found), found)
    assert fitted > quadratic_kappa(y, rounded, grades) + 0.02


def test_regression_scores():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    p = np.array([[1.5, 10.0], [2.0, 24.0], [2.0, 30.0]])
    assert rmse(y, p) == pytest.approx(np.mean([np.sqrt((0.25 + 1) / 3), np.sqrt(16 / 3)]))
    assert r2(y, p) == pytest.approx(np.mean([skm.r2_score(y[:, 0], p[:, 0]), skm.r2_score(y[:, 1], p[:, 1])]))
    assert rmsle(y[:, :1], np.array([[-1.0], [2.0], [3.0]])) == pytest.approx(np.sqrt(np.log(2.0) ** 2 / 3))


def _rates(Y, folds, k):
    return np.array([Y[folds == f].mean(0) for f in range(k)])


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_group_folds_keep_groups_and_label_rates(seed):
    rng = np.random.default_rng(seed)
    n_groups = 400
    groups = np.repeat(np.arange(n_groups), rng.integers(1, 8, n_groups))
    per_group = rng.random((n_groups, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]
    Y = per_group[groups] & (rng.random((len(groups), 6)) < 0.8)
    folds = multilabel_group_folds(Y, groups.astype(str), 5, seed)
    owner = collections.defaultdict(set)
    for g, f in zip(groups, folds):
        owner[g].add(f)
    assert all(len(v) == 1 for v in owner.values())  # no group in two folds
    assert set(folds) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 8  # rows spread evenly as whole groups allow
    overall = Y.mean(0)
    assert np.abs(_rates(Y, folds, 5) - overall).max() < 0.02  # every label's rate close in every fold
    # the same seed gives the same folds; another seed other folds
    assert (multilabel_group_folds(Y, groups.astype(str), 5, seed) == folds).all()
    assert (multilabel_group_folds(Y, groups.astype(str), 5, seed + 7) != folds).any()


def test_multilabel_folds_without_groups_and_with_empty_rows():
    rng = np.random.default_rng(0)
    Y = rng.random((200, 3)) < [0.3, 0.1, 0.0]  # the last label never occurs; many rows have no label
    folds = multilabel_group_folds(Y, None, 4, 0)
    assert np.bincount(folds).tolist() == [50, 50, 50, 50]
    assert np.abs(_rates(Y, folds, 4) - Y.mean(0)).max() < 0.02


def test_regression_key_bins_by_quantile():
    y = np.arange(100, dtype=float)
    key = regression_key(y, 5)
    assert key.min() == 0 and key.max() == 9 and np.all(np.diff(key) >= 0)  # 10 ordered bins of 10 rows
    assert np.bincount(key).tolist() == [10] * 10
    assert regression_key(np.arange(6, dtype=float), 5).max() == 0  # too few rows to bin: one stratum
    two = np.stack([y, -y], 1)
    assert regression_key(two, 5).max() == 0  # the standardised mean is constant here: one bin


def test_label_stack_learns_which_member_knows_which_label():
    from comp.ensembling._task_stack import fit_label_stack

    rng = np.random.default_rng(0)
    n = 600
    Y = (rng.random((n, 2)) < 0.4).astype(float)
    good = np.clip(Y + rng.normal(scale=0.25, size=Y.shape), 0.01, 0.99)
    noise = rng.random(Y.shape)
    # member 0 knows label 0 only, member 1 label 1 only
    P = np.stack([np.stack([good[:, 0], noise[:, 1]], 1), np.stack([noise[:, 0], good[:, 1]], 1)])
    stack = fit_label_stack(P, Y)
    blended = stack.predict(P)
    assert mean_auc(Y, blended) > mean_auc(Y, P.mean(0)) + 0.02
    assert mean_log_loss(Y, blended) < mean_log_loss(Y, P.mean(0))


def test_ridge_stack_recovers_weights_and_offset():
    from comp.ensembling._task_stack import fit_ridge_stack

    rng = np.random.default_rng(1)
    y = rng.normal(size=(500, 1)) * 3 + 10
    a = y[:, 0] + rng.normal(scale=0.3, size=500)  # good member
    b = 0.5 * y[:, 0] + 4 + rng.normal(scale=2.0, size=500)  # biased, noisy member
    P = np.stack([a, b])[:, :, None]
    stack = fit_ridge_stack(P, y, alpha=1e-6)
    assert rmse(y, stack.predict(P)) < rmse(y, P.mean(0)) * 0.5
    assert stack.w[0, 0] > 0.8


def _reference_thresholds(Y, P, beta, average, rounds=3):
    """The plain coordinate ascent: every candidate threshold of a label scored by applying it to every row."""
    from comp.tasks._decisions import THRESHOLD_GRID as grid

    Y, P = np.asarray(Y, bool), np.asarray(P, np.float64)
    order = np.argsort(np.abs(grid - 0.5), kind="stable")
    t = np.full(Y.shape[1], 0.5)
    for _ in range(rounds):
        changed = False
        for j in range(Y.shape[1]):
            scores = []
            for g in grid:
                trial = t.copy()
                trial[j] = g
                scores.append(fbeta_multilabel(Y, apply_thresholds(P, trial), beta, average))
            score = np.array(scores)
            best = order[np.argmax(score[order])]
            now = int(np.argmin(np.abs(grid - t[j])))
            if score[best] > score[now] + 1e-12:
                t[j], changed = grid[best], True
        if not changed:
            break
    return t


@pytest.mark.parametrize("average", ["samples", "micro", "macro"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binned_threshold_search_equals_scoring_every_candidate(average, seed):
    rng = np.random.default_rng(seed)
    n, L = 120 + 90 * seed, 2 + seed
    Y = rng.random((n, L)) < rng.random(L) * 0.6
    P = np.clip(0.3 * Y + rng.random((n, L)) * 0.6, 0, 1)
    if seed == 1:
        P = np.round(P, 2)  # predictions exactly on grid points: on at that threshold, off above it
    for beta in (1.0, 2.0):
        np.testing.assert_array_equal(
            fit_thresholds(Y, P, beta=beta, average=average), _reference_thresholds(Y, P, beta, average)
        )


def _reference_cutpoints(y, p, rounds=4, grid=40):
    """The plain coordinate search: every candidate cut scored by grading every row again."""
    grades = np.unique(y)
    cuts = (grades[:-1] + grades[1:]) / 2.0
    best = quadratic_kappa(y, apply_cutpoints(p, cuts, grades), grades)
    lo_all, hi_all = min(p.min(), grades[0]) - 1.0, max(p.max(), grades[-1]) + 1.0
    for _ in range(rounds):
        moved = False
        for j in range(len(cuts)):
            lo = cuts[j - 1] if j > 0 else lo_all
            hi = cuts[j + 1] if j + 1 < len(cuts) else hi_all
            for c in np.linspace(lo, hi, grid + 2)[1:-1]:
                trial = cuts.copy()
                trial[j] = c
                score = quadratic_kappa(y, apply_cutpoints(p, trial, grades), grades)
                if score > best + 1e-12:
                    best, cuts, moved = score, trial, True
        if not moved:
            break
    return cuts


@pytest.mark.parametrize("seed", range(6))
def test_cutpoints_from_sorted_counts_equal_grading_every_row(seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed
    y = rng.integers(0, k, 400).astype(float) * (2.5 if seed % 2 else 1.0)
    p = y * rng.uniform(0.3, 1.2) + rng.normal(0, 0.8, 400)
    if seed % 3 == 0:
        p = np.round(p, 1)  # many predictions equal, some exactly on a candidate cut
    cuts, grades = fit_cutpoints(y, p)
    np.testing.assert_array_equal(cuts, _reference_cutpoints(y, p))
    np.testing.assert_array_equal(grades, np.unique(y))
