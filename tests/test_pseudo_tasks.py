"""Pseudo-labels and distillation for every task: the selection rule of each task, soft multi-label and regression
rows in data.extra_train, teachers of each task (temperature-softened labels, values in the model's scaled space),
and the honest-CV rules (pseudo rows never validate; a teacher on other folds is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner

import comp
from comp.cli import main
from comp.config import MixupConfig, load_config
from comp.data._augment import BatchMixer
from comp.data._table import load_train_table
from comp.errors import CompError
from comp.pseudo import load_training_targets, select_labels, select_rows, select_values
from comp.run import RunDir
from comp.training._context import FoldContext
from comp.training._fold import FoldTrainer
from comp.training._losses import LabelBCE, ValueBCE, ValueMSE
from comp.training._prepare import plan_folds
from comp.training._soft import DistillLoss, SoftMixer, soften_labels
from tests.conftest import task_config, write_config, write_task_competition

# ---------------------------------------------------------------- selection (numpy only)


def test_multilabel_rows_are_kept_when_every_label_is_confident():
    p = np.array(
        [
            [0.95, 0.02, 0.97],  # every label confident
            [0.95, 0.50, 0.03],  # one label unsure
            [0.05, 0.08, 0.10],  # confidently no label at all
            [0.89, 0.01, 0.01],  # just under the threshold
        ]
    )
    assert select_labels(p, threshold=0.9).tolist() == [0, 2]
    assert select_labels(p, threshold=0.85).tolist() == [0, 2, 3]
    with pytest.raises(CompError, match=r"--threshold must be in \(0.5, 1\], got 0.5"):
        select_labels(p, threshold=0.5)
    with pytest.raises(CompError, match="choose one of --threshold and --top-per-class"):
        select_labels(p)


def test_multilabel_caps_count_each_labels_positives():
    # label 0 is common: six confident positives; label 2 is rare: one row, which also carries label 0
    p = np.array([[c, 0.02, 0.02] for c in (0.91, 0.99, 0.93, 0.97, 0.95, 0.92)] + [[0.96, 0.02, 0.97], [0.01] * 3])
    kept = select_labels(p, threshold=0.9, max_per_class=2)
    # label 0's two most probable positives (rows 1 and 3), the rare label's row, and the row with no label
    assert kept.tolist() == [1, 3, 6, 7]
    top = select_labels(p, top_per_class=1)
    assert top.tolist() == [1, 6]  # each label's most probable positive; label 1 has none; no-label rows never
    assert select_labels(p, top_per_class=3).tolist() == [1, 3, 6]


def test_regression_rows_are_ranked_by_agreement_or_sampled_with_a_seed():
    spread = np.array([0.5, 0.1, 0.9, 0.1, 0.3])
    assert select_values(5, spread=spread, max_rows=3).tolist() == [1, 3, 4]
    assert select_values(5, spread=spread).tolist() == [0, 1, 2, 3, 4]  # no --max-rows: every row
    assert select_values(5).tolist() == [0, 1, 2, 3, 4]
    sample = select_values(50, max_rows=10)
    assert len(sample) == 10 and sample.tolist() == select_values(50, max_rows=10).tolist() == sorted(sample)
    with pytest.raises(CompError, match="--max-rows must be a whole number >= 1"):
        select_values(5, max_rows=0)


def test_classification_selection_is_unchanged():
    p = np.array([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.05, 0.92, 0.03]])
    assert select_rows(p, threshold=0.9).tolist() == [0, 2]


# ---------------------------------------------------------------- comp pseudo per task


LABELS = ["r", "g", "b"]


def task_source(root: Path, name: str, task: str, ids, preds, columns, *, oof=None) -> Path:
    """A run folder of ``task`` with one model that has a test.csv (and, given ``oof``, an oof.csv)."""
    run = root / name
    (run / "models" / "m").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": task, "data": {"id_column": "id"}}))
    head = pd.DataFrame({"id": list(ids)})
    pd.concat([head, pd.DataFrame(preds, columns=columns)], axis=1).to_csv(run / "models/m/test.csv", index=False)
    if oof is not None:
        oof.to_csv(run / "models/m/oof.csv", index=False)
    return run / "models" / "m"


def test_multilabel_pseudo_labels_are_the_probabilities_of_confident_rows(tmp_path):
    p = np.array([[0.95, 0.02, 0.97], [0.95, 0.50, 0.03], [0.05, 0.08, 0.10]])
    model = task_source(tmp_path, "run", "multilabel", ["007", "a", "b"], p, LABELS)
    out = tmp_path / "pl.csv"
    result = comp.pseudo_label(model, out=out)
    df = pd.read_csv(out, dtype={"id": str})
    assert list(df.columns) == ["id", *LABELS] and list(df["id"]) == ["007", "b"]
    np.testing.assert_allclose(df[LABELS].to_numpy(), p[[0, 2]])
    assert result.soft and result.task == "multilabel" and result.per_class == {"r": 1, "g": 0, "b": 1}
    assert "positives" in result.text() and "mean_probability" in result.text()
    with pytest.raises(CompError, match="every label at or above --threshold 0.99"):
        comp.pseudo_label(model, out=tmp_path / "none.csv", threshold=0.99)
    with pytest.raises(CompError, match="--max-rows is for regression sources"):
        comp.pseudo_label(model, out=tmp_path / "none.csv", max_rows=3)
    res = CliRunner().invoke(main, ["pseudo", str(model), "--out", str(out), "--top-per-class", "1"])
    assert res.exit_code == 0 and "(soft labels)" in res.output, res.output
    assert not (tmp_path / "none.csv").exists()


def test_regression_pseudo_targets_are_the_values_of_every_row_of_a_single_model(tmp_path):
    values = np.array([[1.5], [2.5], [3.0], [0.5]])
    model = task_source(tmp_path, "run", "regression", ["a", "b", "c", "d"], values, ["score"])
    result = comp.pseudo_label(model, out=tmp_path / "all.csv")
    df = pd.read_csv(tmp_path / "all.csv")
    assert list(df.columns) == ["id", "score"] and df["score"].tolist() == [1.5, 2.5, 3.0, 0.5]
    assert result.agreement is None and result.rows == 4 and result.mean_confidence["score"] == pytest.approx(1.875)
    two = comp.pseudo_label(model, out=tmp_path / "two.csv", max_rows=2)  # nothing ranks them: a seeded sample
    assert two.rows == 2 and pd.read_csv(tmp_path / "two.csv")["id"].tolist() == [
        ["a", "b", "c", "d"][i] for i in select_values(4, max_rows=2)
    ]
    with pytest.raises(CompError, match="regression pseudo-labels keep every row or the --max-rows"):
        comp.pseudo_label(model, out=tmp_path / "x.csv", threshold=0.9)
    res = CliRunner().invoke(main, ["pseudo", str(model), "--out", str(tmp_path / "x.csv"), "--top-per-class", "2"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()


def test_regression_pseudo_targets_from_a_blend_keep_the_rows_its_members_agree_on(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    ids = [f"{i:02d}" for i in range(n)]
    y = rng.normal(5, 2, (n, 2))
    folds = np.arange(n) % 3
    test_ids = [f"t{i}" for i in range(6)]
    truth = rng.normal(5, 2, (6, 2))
    disagree = np.array([0.0, 3.0, 0.1, 2.0, 0.05, 1.0])[:, None]  # how far member b drifts on each test row
    members = []
    for mid, test in (("a", truth), ("b", truth + disagree)):
        head = pd.DataFrame({"id": ids, "fold": folds, "target:red": y[:, 0], "target:green": y[:, 1]})
        oof = pd.concat([head, pd.DataFrame(y + rng.normal(0, 1, y.shape), columns=["red", "green"])], axis=1)
        members.append(task_source(tmp_path, f"run-{mid}", "regression", test_ids, test, ["red", "green"], oof=oof))
    blend = comp.blend(members, method="mean", name="blend")
    result = comp.pseudo_label(tmp_path / "blend", out=tmp_path / "pl.csv", max_rows=3)
    assert result.source == blend.model_dir and result.agreement and "2 members" in result.agreement
    written = pd.read_csv(tmp_path / "pl.csv")
    assert written["id"].tolist() == ["t0", "t2", "t4"]  # the three rows the members agree on most
    np.testing.assert_allclose(written[["red", "green"]].to_numpy(), (truth + disagree / 2)[[0, 2, 4]], atol=1e-9)


# ---------------------------------------------------------------- soft targets in training (no training)


EXTRA = {  # kind -> (columns of the pseudo file, values for t00..t02)
    "multilabel": (LABELS, [[0.9, 0.1, 0.8], [0.05, 0.95, 0.5], [0.0, 1.0, 0.2]]),
    "regression": (["score"], [[12.5], [300.0], [-4.0]]),
}


def _extra(root: Path, kind: str) -> Path:
    columns, values = EXTRA[kind]
    df = pd.concat([pd.DataFrame({"id": ["t00", "t01", "t02"]}), pd.DataFrame(values, columns=columns)], axis=1)
    df.to_csv(root / "pl.csv", index=False)
    return root / "pl.csv"


@pytest.mark.parametrize("kind, loss", [("multilabel", "bce"), ("regression", "mse"), ("regression", "bce")])
def test_pseudo_rows_join_every_folds_training_part_in_the_models_space(tmp_path, kind, loss):
    root = write_task_competition(tmp_path / kind, kind)
    _extra(root, kind)
    cfg = load_config(write_config(root, task_config(root, kind, data__extra_train="pl.csv", loss__name=loss)))
    table = load_train_table(cfg.data, task=cfg.task)
    run = RunDir(tmp_path / "run")
    folds, _ = plan_folds(cfg, run, table)
    targets = load_training_targets(cfg, table, folds, run)
    assert targets is not None and targets.extra is not None and targets.extra.soft and targets.task == cfg.task
    n = len(table.df)
    columns, values = EXTRA[kind]
    extra = np.asarray(values, np.float32)[:, [columns.index(c) for c in table.classes]]  # read by column name
    for k in range(cfg.folds.n_splits):
        trainer = FoldTrainer(FoldContext(cfg, cfg.models[0], table, folds, k, run, progress=False, soft=targets))
        assert set(trainer.train_idx) == set(np.flatnonzero(folds != k)) | {n, n + 1, n + 2}
        assert set(trainer.valid_idx) == set(np.flatnonzero(folds == k)) and trainer.valid_idx.max() < n
        assert [p.name for p in trainer.train_ds.paths[n:]] == ["t00.png", "t01.png", "t02.png"]
        # pseudo rows and labelled rows alike in the space the fold's network is trained in
        spec = trainer.output
        expected = spec.to_model(extra)
        if spec.activation == "sigmoid" and kind == "regression":
            expected = np.clip(expected, 0, 1)  # min-max scaled values beyond the training part's range
        np.testing.assert_allclose(trainer.mixer.labels[n:].numpy(), expected, rtol=1e-5, atol=1e-6)
        mine = np.flatnonzero(folds != k)  # the labelled rows it trains on, as the fold without pseudo rows would
        np.testing.assert_allclose(trainer.mixer.labels[mine].numpy(), spec.to_model(table.targets[mine]), rtol=1e-5)
        if kind == "regression" and loss == "mse":  # standardised with the fold's training part only
            part = table.targets[folds != k]
            np.testing.assert_allclose(spec.shift, part.mean(0), rtol=1e-5)
    record = targets.record()["extra_train"]
    if kind == "multilabel":
        assert record["per_label"] == {"r": 1, "g": 2, "b": 2}
    else:
        assert record["mean"] == {"score": pytest.approx(np.mean([12.5, 300.0, -4.0]))}


@pytest.mark.parametrize(
    "kind, content, needle",
    [
        ("multilabel", "id,r,g\nt00,0.5,0.5\n", "column 'b' is missing"),
        ("multilabel", "id,r,g,b\nt00,0.5,1.5,0\n", "line 2: column 'g' holds '1.5', not a probability in [0, 1]"),
        ("multilabel", "id,tags\nt00,r g\n", "needs one probability column per label (b, g, r)"),
        ("regression", "id,score\nt00,abc\n", "line 2: column 'score' holds 'abc', not a finite number"),
        ("regression", "id,value\nt00,3\n", "needs one value column per target (score)"),
        ("regression", "id,score\ng00_0,3\n", "line 2: id 'g00_0' is also a row of"),
    ],
)
def test_bad_extra_rows_of_each_task_are_one_line_before_anything_is_written(tmp_path, kind, content, needle):
    root = write_task_competition(tmp_path / kind, kind)
    (root / "bad.csv").write_text(content)
    cfg = load_config(write_config(root, task_config(root, kind, data__extra_train="bad.csv")))
    with pytest.raises(CompError) as info:
        comp.train_folds(cfg, tmp_path / "run", progress=False)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_soft_mixer_smooths_label_rows_like_the_batch_mixer():
    mix = MixupConfig(mixup_alpha=0.4, cutmix_alpha=1.0)
    Y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    x = torch.rand(4, 3, 8, 8)
    for epoch in range(3):
        np.random.seed(epoch)
        xa, ya = BatchMixer(mix, 3, 0.1)(x.clone(), Y, epoch)
        np.random.seed(epoch)
        xb, yb = SoftMixer(mix, 3, 0.1, Y, per_label=True)(x.clone(), torch.arange(4), epoch)
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(ya, yb)


def test_label_distillation_is_a_per_label_binary_kl_at_temperature_t():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = (torch.rand(6, 3) > 0.5).float()
    base = LabelBCE(None, load_config({"task": "multilabel"}).loss)
    t = 2.0
    own = torch.from_numpy(soften_labels(torch.sigmoid(logits).numpy(), t)).float()
    assert DistillLoss(base, 3, 1.0, t, task="multilabel")(logits, torch.cat([labels, own], 1)).item() == (
        pytest.approx(0.0, abs=1e-5)
    )
    teacher = torch.full((6, 3), 0.7)
    half = DistillLoss(base, 3, 0.5, t, task="multilabel")(logits, torch.cat([labels, teacher], 1)).item()
    q = torch.sigmoid(logits / t)
    kl = (teacher * (teacher / q).log() + (1 - teacher) * ((1 - teacher) / (1 - q)).log()).mean().item()
    assert half == pytest.approx(0.5 * base(logits, labels).item() + 0.5 * t * t * kl, rel=1e-5)
    np.testing.assert_allclose(soften_labels(np.array([[0.2, 0.9]]), 1.0), [[0.2, 0.9]], rtol=1e-6)
    np.testing.assert_allclose(soften_labels(np.array([[0.5, 0.9]]), 1e6), [[0.5, 0.5]], atol=1e-5)


@pytest.mark.parametrize("squash", [False, True])
def test_value_distillation_is_mse_in_the_models_space(squash):
    torch.manual_seed(0)
    out = torch.randn(5, 2)
    labels, teacher = torch.rand(5, 2), torch.rand(5, 2)
    cfg = load_config({"task": "regression"}).loss
    base = ValueBCE(cfg) if squash else ValueMSE(cfg)
    loss = DistillLoss(base, 2, 0.25, 4.0, task="regression", squash=squash)(out, torch.cat([labels, teacher], 1))
    pred = torch.sigmoid(out) if squash else out
    expected = 0.75 * base(out, labels).item() + 0.25 * ((pred - teacher) ** 2).mean().item()  # no temperature
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------- a student of each task (tiny training)


def _teacher(tmp_path: Path, root: Path, cfg, kind: str) -> Path:
    """A trained teacher run of the same task and folds, with a test.csv in the task's units."""
    comp.train_folds(cfg, tmp_path / "teacher", progress=False)
    run = RunDir(tmp_path / "teacher")
    oof = run.read_oof("eff")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    lo, hi = oof.probs.min(0), oof.probs.max(0)
    values = lo + np.random.default_rng(0).random((len(sample), len(oof.classes))) * (hi - lo)
    pd.concat([sample[["id"]], pd.DataFrame(values, columns=oof.classes)], axis=1).to_csv(
        run.test_pred("eff"), index=False
    )
    return run.model_dir("eff")


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_a_student_of_each_task_trains_on_pseudo_rows_and_a_teacher(tmp_path, kind):
    root = write_task_competition(tmp_path / kind, kind)
    cfg = load_config(write_config(root, task_config(root, kind)))
    teacher = _teacher(tmp_path, root, cfg, kind)
    pl = tmp_path / "pl.csv"
    comp.pseudo_label(teacher, out=pl, **({"top_per_class": 2} if kind == "multilabel" else {"max_rows": 5}))
    over = {"data.extra_train": str(pl), "loss.distill.teacher": str(teacher), "loss.distill.temperature": 2.0}
    student = cfg.replace(**over)
    result = comp.train_folds(student, tmp_path / "student", progress=False)
    run = RunDir(tmp_path / "student")
    train_ids = set(pd.read_csv(root / "train.csv", dtype=str)["id"])
    pseudo_ids = set(pd.read_csv(pl, dtype=str)["id"])
    assert pseudo_ids and not pseudo_ids & train_ids and np.isfinite(result.models["eff"].cv)
    for k in range(cfg.folds.n_splits):  # validation rows are labelled rows, never pseudo rows
        part = run.read_oof_part("eff", k)
        assert set(part.ids) <= train_ids and (part.folds == k).all()
    assert set(run.read_oof("eff").ids) == train_ids
    metrics = json.loads(run.metrics("eff").read_text())
    assert metrics["task"] == cfg.task and metrics["extra_train"]["rows"] == len(pseudo_ids)
    assert (
        metrics["distill"]["teacher"] == str(teacher.resolve()) and len(metrics["distill"]["teacher_test_sha256"]) == 64
    )


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_a_teacher_on_other_folds_or_of_another_task_is_refused(tmp_path, kind):
    root = write_task_competition(tmp_path / kind, kind)
    cfg = load_config(write_config(root, task_config(root, kind)))
    table = load_train_table(cfg.data, task=cfg.task)
    folds, _ = plan_folds(cfg, RunDir(tmp_path / "x"), table)
    teacher_run = tmp_path / "teacher"
    (teacher_run / "models/t").mkdir(parents=True)
    (teacher_run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    swapped = folds.copy()
    other = int(np.flatnonzero(folds != folds[0])[0])
    swapped[[0, other]] = swapped[[other, 0]]  # two rows trade folds: everything else agrees
    ids = table.df["id"].to_numpy()
    head = {"id": ids, "fold": swapped, **{f"target:{c}": table.targets[:, j] for j, c in enumerate(table.classes)}}
    preds = pd.DataFrame(np.asarray(table.targets, np.float64), columns=table.classes)
    pd.concat([pd.DataFrame(head), preds], axis=1).to_csv(teacher_run / "models/t/oof.csv", index=False)
    student = cfg.replace(**{"loss.distill.teacher": str(teacher_run / "models/t")})
    with pytest.raises(CompError, match=r"is in teacher fold \d but in student fold \d \(2 ids differ\)"):
        comp.train_folds(student, tmp_path / "run", progress=False)
    other_task = {"multilabel": "regression", "regression": "multilabel"}[kind]
    (teacher_run / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "task": other_task, "metric": None}))
    with pytest.raises(CompError, match=f"is a {other_task} model and the student is {kind}"):
        comp.train_folds(student, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
