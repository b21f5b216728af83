"""Sample weights (data.weight_column): a weight of 0 equals dropping the row and 2 equals duplicating it, in
every task's losses, through CutMix/MixUp, the engine and soft targets; bad weights are refused before any
write; the weighted OOF score beside the plain one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from comp.config import LossConfig, MixupConfig, load_config
from comp.data._augment import BatchMixer
from comp.data._sample_weights import by_position, check_fold_weights, read_weights, training_weights
from comp.data._table import load_train_table
from comp.errors import CompError
from comp.run import RunDir, load_checkpoint
from comp.tasks import TASKS
from comp.tasks._weighted import WEIGHTED, weighted_score
from comp.training import train_folds
from comp.training._engine import StepConfig, train_one_epoch
from comp.training._losses import TASK_LOSSES, build_loss
from comp.training._soft import DistillLoss, SoftMixer
from tests.conftest import TASK_KINDS, task_config, tiny_config, write_competition, write_config, write_task_competition

RAW = np.array([1.0, 2.0, 0.0, 1.0, 0.5, 3.0])  # row 2 weighs nothing, row 1 twice, row 5 three times
# the rows RAW's weights stand for, for the rows whose weight is a whole number (row 4's 0.5 is left out of both)


def _targets(task: str, n: int, rng) -> torch.Tensor:
    if task == "classification":
        return torch.softmax(torch.from_numpy(rng.normal(size=(n, 3))).float() * 2, 1)  # soft rows (mixed/smoothed)
    if task == "multilabel":
        return torch.from_numpy(rng.random((n, 3))).float()
    return torch.from_numpy(rng.normal(size=(n, 3))).float()


def _losses():
    for task, reg in TASK_LOSSES.items():
        for name in reg:
            yield task, name, {}
    yield "classification", "ce", {"class_weights": [1.0, 3.0, 0.5]}
    yield "multilabel", "bce", {"pos_weight": [2.0, 1.0, 4.0]}


@pytest.mark.parametrize(("task", "name", "extra"), list(_losses()))
def test_every_loss_weighs_a_row_as_that_many_copies_of_it(task, name, extra):
    """Weights scaled over the part (``training_weights``): 0 drops the row, k repeats it k times."""
    rng = np.random.default_rng(0)
    raw = np.array([1.0, 2.0, 0.0, 1.0, 3.0])
    logits = torch.from_numpy(rng.normal(size=(5, 3))).float()
    target = _targets(task, 5, rng)
    loss = build_loss(LossConfig(name=name, **extra), np.array([0, 1, 2, 0, 1]), 3, task)
    w = torch.from_numpy(training_weights(raw))
    copies = torch.tensor([0, 1, 1, 3, 4, 4, 4])
    want = loss(logits[copies], target[copies])
    torch.testing.assert_close(loss(logits, target, w), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss(logits, target, torch.ones(5)), loss(logits, target), rtol=1e-6, atol=1e-7)
    assert not torch.allclose(loss(logits, target), want, rtol=1e-4)  # the weights change something


@pytest.mark.parametrize("task", list(TASK_LOSSES))
def test_distillation_weighs_rows_like_its_base_loss(task):
    rng = np.random.default_rng(1)
    raw = np.array([1.0, 0.0, 2.0, 1.0])
    logits = torch.from_numpy(rng.normal(size=(4, 3))).float()
    labels, teacher = _targets(task, 4, rng), _targets(task, 4, rng)
    if task != "regression":
        teacher = teacher.clamp(0.01, 0.99)
    base = build_loss(LossConfig(name=next(iter(TASK_LOSSES[task]))), np.zeros(4, np.int64), 3, task)
    loss = DistillLoss(base, 3, 0.5, 2.0, task=task)
    target = torch.cat([labels, teacher], 1)
    copies = torch.tensor([0, 2, 2, 3])
    got = loss(logits, target, torch.from_numpy(training_weights(raw)))
    torch.testing.assert_close(got, loss(logits[copies], target[copies]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_a_mixed_row_weighs_lam_of_its_own_weight_and_the_rest_of_its_partner(mode):
    mix = MixupConfig(mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, mode=mode)
    torch.manual_seed(0)
    np.random.seed(0)
    y = torch.arange(6)  # six rows of six classes: a row's lam is its soft target at its own class
    w = torch.tensor([1.0, 2.0, 0.0, 4.0, 1.0, 3.0])
    _, soft, mixed = BatchMixer(mix, 6, 0.0).mix(torch.rand(6, 3, 8, 8), y, 0, w)
    lam = soft[torch.arange(6), y]
    assert mixed is not None and not torch.allclose(lam, torch.ones(6))
    torch.testing.assert_close(mixed, lam * w + (1 - lam) * w.flip(0))
    # the soft-target mixer (pseudo rows, distillation) mixes weights with the same draw
    torch.manual_seed(0)
    np.random.seed(0)
    _, soft2, mixed2 = SoftMixer(mix, 6, 0.0, torch.eye(6)).mix(torch.rand(6, 3, 8, 8), y, 0, w)
    torch.testing.assert_close(soft2, soft)
    torch.testing.assert_close(mixed2, mixed)
    assert BatchMixer(MixupConfig(), 6, 0.0).mix(torch.rand(6, 3, 8, 8), y, 0, w)[2] is w  # no mixing: untouched


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x, y, w=None):
        self.x, self.y, self.w = x, y, w

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return (self.x[i], self.y[i]) if self.w is None else (self.x[i], self.y[i], self.w[i])


def _fit(x, y, w=None, epochs=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    model(x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = torch.utils.data.DataLoader(_Rows(x, y, w), batch_size=len(x), shuffle=True)
    loss = build_loss(LossConfig(name="ce"), np.zeros(1, np.int64), 3)
    for e in range(epochs):
        train_one_epoch(model, loader, opt, loss, BatchMixer(MixupConfig(), 3, 0.1), e, StepConfig(torch.device("cpu")))
    return model.state_dict()


def test_training_with_weight_zero_equals_dropping_and_two_equals_duplicating():
    """Through the engine (loader, mixer, smoothing, optimizer): a model without BatchNorm, whole-part batches."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    raw = np.array([1.0, 2.0, 0.0, 1.0, 1.0, 1.0])
    weighted = _fit(x, y, torch.from_numpy(training_weights(raw)))
    copies = torch.tensor([0, 1, 1, 3, 4, 5])
    repeated = _fit(x[copies], y[copies])
    plain = _fit(x, y)
    for k in weighted:
        torch.testing.assert_close(weighted[k], repeated[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(weighted[k], plain[k], atol=1e-4) for k in weighted)


def test_training_weights_scale_to_mean_one_with_pseudo_rows_at_one():
    w = training_weights(np.array([2.0, 0.0, 4.0]), n_extra=2)  # raw [2, 0, 4, 1, 1]: mean 1.6
    np.testing.assert_allclose(w, np.array([2.0, 0.0, 4.0, 1.0, 1.0]) / 1.6, rtol=1e-6)
    pos = by_position(w, np.array([3, 0, 1]), 7)  # table rows 3, 0, 1 train; positions 5, 6 are pseudo rows
    np.testing.assert_allclose(pos, [w[1], w[2], 0, w[0], 0, w[3], w[4]], rtol=1e-6)


def _where(i: int) -> str:
    return f"train.csv line {i + 2}"


@pytest.mark.parametrize(
    ("cells", "needle"),
    [
        (["1", "abc", "2"], "train.csv line 3: weight 'abc'"),
        (["1", "2", None], "train.csv line 4: an empty weight"),
        (["1", "inf", "2"], "train.csv line 3: weight 'inf'"),
        (["1", "nan", "2"], "train.csv line 3: weight 'nan'"),
        (["1", "-0.5", "2"], "train.csv line 3: negative weight '-0.5'"),
        (["0", "0", "0.0"], "every weight in column 'w'"),
    ],
)
def test_bad_weights_name_the_row_and_the_fix(cells, needle):
    with pytest.raises(CompError, match="data.weight_column") as err:
        read_weights(pd.DataFrame({"w": cells}), "w", "train.csv", _where)
    assert needle in str(err.value)


def test_a_fold_whose_training_part_weighs_nothing_is_refused():
    check_fold_weights(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 0, 1, 1]), "w")
    with pytest.raises(CompError, match="outside fold 0 has weight 0"):
        check_fold_weights(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0, 0, 1, 1]), "w")


def test_bad_weight_column_is_refused_before_the_run_folder_is_written(tmp_path):
    root = write_competition(tmp_path / "comp", n_groups=6)
    df = pd.read_csv(root / "train.csv")
    df["votes"] = 1
    df.loc[4, "votes"] = -2
    df.to_csv(root / "train.csv", index=False)
    cfg = load_config(write_config(root, tiny_config(root, data__weight_column="votes")))
    with pytest.raises(CompError, match=r"train.csv line 6: negative weight '-2' in column 'votes'"):
        train_folds(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    cfg = load_config(write_config(root, tiny_config(root, data__weight_column="vote")))
    with pytest.raises(CompError, match="column 'vote' not found.*set data.weight_column"):
        load_train_table(cfg.data)


@pytest.mark.parametrize(("task", "name"), sorted(WEIGHTED))
def test_weighted_metrics_count_a_row_as_that_many_copies(task, name):
    rng = np.random.default_rng(3)
    n = 24
    if task == "classification":
        y = np.arange(n) % 3
        p = rng.dirichlet(np.ones(3), n)
    elif task == "multilabel":
        y = (rng.random((n, 3)) < 0.5).astype(float)
        y[:2] = [[1, 1, 1], [0, 0, 0]]
        p = rng.random((n, 3))
    else:
        y, p = rng.uniform(0, 5, (n, 2)), rng.uniform(0, 5, (n, 2))
    w = rng.integers(0, 4, n).astype(float)
    w[:6] = [1, 1, 1, 2, 2, 3]  # every class present with a positive weight
    metric = TASKS[task].metrics[name]
    rows = np.repeat(np.arange(n), w.astype(int))
    assert weighted_score(metric, y, p, w) == pytest.approx(metric(y[rows], p[rows]), rel=1e-9)
    assert weighted_score(metric, y, p, np.ones(n)) == pytest.approx(metric(y, p), rel=1e-9)


def test_metrics_without_a_weighted_form_say_so():
    assert weighted_score(TASKS["regression"].metrics["qwk"], np.zeros(3), np.zeros(3), np.ones(3)) is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classification", *TASK_KINDS])
def test_training_with_weights_records_them_and_a_weighted_cv(tmp_path, kind):
    if kind == "classification":
        root = write_competition(tmp_path / "comp", n_groups=8)
        over = tiny_config(root, data__weight_column="votes")
    else:
        root = write_task_competition(tmp_path / "comp", kind, n_groups=8)
        over = task_config(root, kind, data__weight_column="votes")
    df = pd.read_csv(root / "train.csv")
    df["votes"] = np.arange(len(df)) % 3  # some rows weigh 0
    df.to_csv(root / "train.csv", index=False)
    over["augment"]["mixup"] = {"mixup_alpha": 0.4, "prob": 1.0}
    cfg = load_config(write_config(root, over))
    train_folds(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "models" / "eff" / "metrics.json").read_text())
    assert metrics["weight_column"] == "votes"
    metric = TASKS[cfg.task].metrics[metrics["metric"]]
    if (cfg.task, metric.name) in WEIGHTED:
        assert np.isfinite(metrics["cv_weighted"]) and len(metrics["fold_scores_weighted"]) == 2
    else:
        assert "cv_weighted" not in metrics
    ckpt = load_checkpoint(RunDir(tmp_path / "run").checkpoint("eff", 0))
    assert ckpt.meta.config["data"]["weight_column"] == "votes"
