"""Pseudo-labels (comp pseudo, data.extra_train) and distillation (loss.distill): selection, files, honest CV
(pseudo rows never validate; a teacher on other folds is refused), soft targets, CLI and Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import N_CLASSES, tiny_config, write_config

import comp
from comp.cli import main
from comp.config import MixupConfig, dump, load_config
from comp.data._augment import BatchMixer
from comp.data._table import load_train_table
from comp.errors import CompError, ConfigError
from comp.pseudo import load_training_targets, select_rows
from comp.run import RunDir
from comp.training._context import FoldContext
from comp.training._fold import FoldTrainer
from comp.training._losses import SoftCrossEntropy
from comp.training._prepare import plan_folds
from comp.training._soft import DistillLoss, SoftMixer, soften

CLASSES = [f"c{i}" for i in range(N_CLASSES)]


# ---------------------------------------------------------------- helpers


def probs_of(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64)


def fake_source(root: Path, name: str, test_ids, probs, *, classes=CLASSES, id_col: str = "id") -> Path:
    """A run folder with one model that has only a test.csv (what comp pseudo reads)."""
    run = root / name
    (run / "models" / "m").mkdir(parents=True)
    (run / "config.yaml").write_text(dump(load_config(data={"id_column": id_col})))
    head = pd.DataFrame({id_col: list(test_ids)})
    pd.concat([head, pd.DataFrame(probs, columns=classes)], axis=1).to_csv(run / "models/m/test.csv", index=False)
    return run / "models" / "m"


def student_cfg(comp_dir: Path, **kw):
    return load_config(write_config(comp_dir, tiny_config(comp_dir, **kw)))


def make_teacher(root: Path, cfg, name: str = "teacher", *, folds=None, targets=None, test: bool = True) -> Path:
    """A hand-made teacher run: OOF rows on the student's own folds (unless ``folds`` is given), informative
    probabilities, and a test.csv over the competition's test ids."""
    table = load_train_table(cfg.data)
    planned, _ = plan_folds(cfg, RunDir(root / "no-run"), table)
    rng = np.random.default_rng(1)
    n = len(table.targets)
    probs = rng.dirichlet(np.ones(N_CLASSES), n) * 0.3
    probs[np.arange(n), table.targets] += 0.7
    run = root / name
    (run / "models" / "t").mkdir(parents=True)
    (run / "config.yaml").write_text(dump(cfg))
    ids = table.df["id"].to_numpy()
    f = planned if folds is None else folds
    labels = np.asarray(CLASSES, dtype=object)[table.targets] if targets is None else targets
    pd.DataFrame({"id": ids, "fold": f}).to_csv(run / "folds.csv", index=False)
    oof = pd.concat(
        [pd.DataFrame({"id": ids, "fold": f, "target": labels}), pd.DataFrame(probs, columns=CLASSES)], axis=1
    )
    oof.to_csv(run / "models/t/oof.csv", index=False)
    if test:
        test_ids = pd.read_csv(Path(cfg.data.sample_submission), dtype=str)["id"]
        tp = rng.dirichlet(np.ones(N_CLASSES), len(test_ids)) * 0.4
        tp[np.arange(len(test_ids)), np.arange(len(test_ids)) % N_CLASSES] += 0.6  # test image t is class t % 3
        pd.concat([pd.DataFrame({"id": test_ids}), pd.DataFrame(tp, columns=CLASSES)], axis=1).to_csv(
            run / "models/t/test.csv", index=False
        )
    return run / "models" / "t"


def write_extra(path: Path, rows: dict[str, str] | None = None, soft: np.ndarray | None = None, ids=None) -> Path:
    if soft is not None:
        df = pd.concat([pd.DataFrame({"id": ids}), pd.DataFrame(soft, columns=CLASSES)], axis=1)
    else:
        assert rows is not None
        df = pd.DataFrame({"id": list(rows), "label": list(rows.values())})
    df.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- selection (numpy only)


def test_threshold_keeps_confident_rows_in_row_order():
    p = probs_of([[0.95, 0.03, 0.02], [0.5, 0.4, 0.1], [0.05, 0.92, 0.03], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]])
    assert select_rows(p, threshold=0.9).tolist() == [0, 2, 4]
    assert select_rows(p, threshold=0.8).tolist() == [0, 2, 3, 4]


def test_max_per_class_keeps_the_most_confident_of_a_common_class_and_spares_the_rare_one():
    # class 0 is easy and common: 6 confident rows; class 2 is rare: one row just over the threshold
    p = probs_of([[c, (1 - c) / 2, (1 - c) / 2] for c in (0.91, 0.99, 0.93, 0.97, 0.95, 0.92)] + [[0.02, 0.03, 0.95]])
    kept = select_rows(p, threshold=0.9, max_per_class=2)
    assert kept.tolist() == [1, 3, 6]  # the two most confident class-0 rows, and the rare class-2 row


def test_top_per_class_gives_every_class_its_count_whatever_the_confidence():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 60)
    kept = select_rows(p, top_per_class=4)
    labels = p.argmax(1)
    assert np.bincount(labels[kept], minlength=3).tolist() == [4, 4, 4]
    for c in range(3):  # and they are that class's most confident rows
        conf = p.max(1)
        rows = np.flatnonzero(labels == c)
        assert set(kept[labels[kept] == c]) == set(rows[np.argsort(-conf[rows], kind="stable")[:4]])


def test_a_class_with_fewer_rows_than_the_cap_keeps_them_all():
    p = probs_of([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]])
    assert select_rows(p, top_per_class=5).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"threshold": 0.9, "top_per_class": 2}, "one of --threshold and --top-per-class"),
        ({}, "one of --threshold and --top-per-class"),
        ({"threshold": 1.5}, "--threshold must be in (0, 1]"),
        ({"threshold": 0.0}, "--threshold must be in (0, 1]"),
        ({"top_per_class": 0}, "--top-per-class must be a whole number >= 1"),
        ({"threshold": 0.5, "max_per_class": 0}, "--max-per-class must be a whole number >= 1"),
        ({"top_per_class": 2, "max_per_class": 3}, "--max-per-class caps --threshold"),
    ],
)
def test_selection_options_are_checked(kw, needle):
    with pytest.raises(CompError, match=None) as info:
        select_rows(np.full((2, 3), 1 / 3), **kw)
    assert needle in str(info.value)


# ---------------------------------------------------------------- comp pseudo


def test_pseudo_label_writes_hard_and_soft_rows(tmp_path):
    p = probs_of([[0.95, 0.03, 0.02], [0.4, 0.3, 0.3], [0.02, 0.03, 0.95], [0.1, 0.85, 0.05]])
    model = fake_source(tmp_path, "blend", ["007", "NA", "t2", "t3"], p)  # ids stay strings ("007", "NA")
    hard = comp.pseudo_label(model, out=tmp_path / "hard.csv", threshold=0.9)
    df = pd.read_csv(tmp_path / "hard.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == ["id", "label"] and df.to_dict("list") == {
        "id": ["007", "t2"],
        "label": ["c0", "c2"],
    }
    assert hard.rows == 2 and hard.per_class == {"c0": 1, "c1": 0, "c2": 1} and not hard.soft
    # a run folder with one model is its model folder; --soft keeps the probabilities
    soft = comp.pseudo_label(tmp_path / "blend", out=tmp_path / "soft.csv", top_per_class=1, soft=True)
    df = pd.read_csv(tmp_path / "soft.csv", dtype={"id": str}, keep_default_na=False)
    assert list(df.columns) == ["id", *CLASSES] and list(df["id"]) == ["007", "t2", "t3"]
    np.testing.assert_allclose(df[CLASSES].to_numpy(), p[[0, 2, 3]])
    assert soft.soft and soft.rows == 3


def test_pseudo_label_bad_sources_are_one_line(tmp_path):
    p = probs_of([[0.6, 0.2, 0.2], [0.5, 0.3, 0.2]])
    fake_source(tmp_path, "run", ["a", "b"], p)
    shutil.copytree(tmp_path / "run/models/m", tmp_path / "run/models/m2")
    with pytest.raises(CompError, match="holds 2 models with test.csv; pass one model folder"):
        comp.pseudo_label(tmp_path / "run", out=tmp_path / "x.csv")
    with pytest.raises(CompError, match="no row of .* reaches --threshold 0.9 .the most confident is 0.600"):
        comp.pseudo_label(tmp_path / "run/models/m", out=tmp_path / "x.csv")
    (tmp_path / "run/models/m/test.csv").unlink()
    with pytest.raises(CompError, match="has no test.csv; run comp predict"):
        comp.pseudo_label(tmp_path / "run/models/m", out=tmp_path / "x.csv")
    with pytest.raises(CompError, match="not found"):
        comp.pseudo_label(tmp_path / "nowhere", out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_a_second_round_pseudo_labels_from_a_blend(comp_dir, tmp_path):
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir)))
    members = [make_teacher(tmp_path, cfg, name) for name in ("r1", "r2")]
    blend = comp.blend(members, method="mean", name="blend")
    from_blend = comp.pseudo_label(tmp_path / "blend", out=tmp_path / "round2.csv", threshold=0.5)
    assert from_blend.source == blend.model_dir
    test = pd.read_csv(blend.model_dir / "test.csv", dtype={"id": str})
    confident = test.loc[test[CLASSES].max(axis=1) >= 0.5]
    written = pd.read_csv(tmp_path / "round2.csv", dtype=str)
    assert list(written["id"]) == list(confident["id"])
    assert list(written["label"]) == list(confident[CLASSES].idxmax(axis=1))


def test_pseudo_cli(tmp_path):
    p = probs_of([[0.95, 0.03, 0.02], [0.02, 0.03, 0.95], [0.4, 0.3, 0.3]])
    model = fake_source(tmp_path, "run", ["a", "b", "c"], p)
    out = tmp_path / "pl.csv"
    res = CliRunner().invoke(
        main, ["pseudo", str(model), "--out", str(out), "--threshold", "0.9", "--max-per-class", "5"]
    )
    assert res.exit_code == 0, res.output
    assert "2 of 3 test rows" in res.output and f"data.extra_train={out}" in res.output
    assert pd.read_csv(out)["id"].tolist() == ["a", "b"]
    bad = CliRunner().invoke(main, ["pseudo", str(model), "--out", str(out), "--threshold", "2"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "--threshold must be in (0, 1]" in bad.output


# ---------------------------------------------------------------- config


def test_set_distill_teacher_alone_takes_the_defaults(comp_dir):
    path = write_config(comp_dir, tiny_config(comp_dir))
    cfg = load_config(path, overrides=["loss.distill.teacher=runs/blend", "data.extra_train=pl.csv"])
    assert cfg.loss.distill.teacher == str((comp_dir / "runs/blend").resolve())
    assert (cfg.loss.distill.alpha, cfg.loss.distill.temperature) == (0.5, 2.0)
    assert cfg.data.extra_train == str((comp_dir / "pl.csv").resolve())  # relative to the config, like every data path
    assert load_config(path).loss.distill.teacher is None and not load_config(path).loss.distill.enabled
    for bad, needle in (
        ("loss.distill.alpha=1.5", "must be <= 1"),
        ("loss.distill.temperature=0", "must be > 0"),
        ("loss.distill.teachr=x", "did you mean 'teacher'"),
        ("data.extra_train=''", "empty string"),
    ):
        with pytest.raises(ConfigError, match=needle):
            load_config(path, overrides=[bad])


def test_a_run_saved_before_these_keys_existed_is_still_the_same_config(comp_dir, tmp_path):
    import yaml

    from comp.training._prepare import prepare_run

    cfg = student_cfg(comp_dir)
    run = RunDir(tmp_path / "old")
    old = cfg.to_dict()
    del old["data"]["extra_train"], old["loss"]["distill"]  # what an older comp saved
    (tmp_path / "old/models/eff").mkdir(parents=True)
    (tmp_path / "old/config.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "old/models/eff/fold0.pt").write_bytes(b"")  # a trained fold: the config is compared, not replaced
    prepare_run(cfg, run)
    with pytest.raises(CompError, match=r"different config \(keys differ: loss.distill.teacher\)"):
        prepare_run(cfg.replace(**{"loss.distill.teacher": str(tmp_path)}), run)


# ---------------------------------------------------------------- soft targets in training (no training)


def test_soft_mixer_equals_batch_mixer_for_one_hot_rows():
    mix = MixupConfig(mixup_alpha=0.4, cutmix_alpha=1.0)
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    labels = torch.eye(3)[torch.tensor([2, 0, 1, 1, 0, 2, 1])]  # rows 6.. are unused, row ids map to classes
    rows = torch.tensor([1, 0, 2, 3, 4, 5])
    x = torch.rand(6, 3, 8, 8)
    for epoch in range(3):
        np.random.seed(epoch)
        xa, ya = BatchMixer(mix, 3, 0.1)(x.clone(), y, epoch)
        np.random.seed(epoch)
        xb, yb = SoftMixer(mix, 3, 0.1, labels)(x.clone(), rows, epoch)
        torch.testing.assert_close(xa, xb)
        torch.testing.assert_close(ya, yb)


def test_distill_loss_mixes_the_label_loss_and_the_teacher_term():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    labels = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1])]
    base = SoftCrossEntropy()
    own = torch.from_numpy(soften(torch.softmax(logits, 1).numpy(), 2.0)).float()  # the student's own softened output
    other = torch.from_numpy(soften(np.full((5, 3), 1 / 3), 2.0)).float()
    assert DistillLoss(base, 3, 0.0, 2.0)(logits, torch.cat([labels, other], 1)) == pytest.approx(
        base(logits, labels).item()
    )
    assert DistillLoss(base, 3, 1.0, 2.0)(logits, torch.cat([labels, own], 1)).item() == pytest.approx(0.0, abs=1e-5)
    half = DistillLoss(base, 3, 0.5, 2.0)(logits, torch.cat([labels, other], 1)).item()
    q = torch.log_softmax(logits / 2.0, 1)
    kl = (other * (other.log() - q)).sum(1).mean().item()
    assert half == pytest.approx(0.5 * base(logits, labels).item() + 0.5 * 4.0 * kl, rel=1e-5)


def test_fold_trainer_adds_pseudo_rows_to_training_only_with_their_soft_labels(comp_dir, tmp_path):
    ids = ["t00", "t01", "t02"]
    soft = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    write_extra(comp_dir / "soft.csv", soft=soft, ids=ids)
    cfg = student_cfg(comp_dir, data__extra_train="soft.csv")
    table = load_train_table(cfg.data)
    run = RunDir(tmp_path / "run")
    folds, _ = plan_folds(cfg, run, table)
    targets = load_training_targets(cfg, table, folds, run)
    assert targets is not None and targets.extra is not None and targets.extra.soft and targets.teacher is None
    n = len(table.targets)
    for k in range(cfg.folds.n_splits):
        trainer = FoldTrainer(FoldContext(cfg, cfg.models[0], table, folds, k, run, progress=False, soft=targets))
        assert set(trainer.train_idx) == set(np.flatnonzero(folds != k)) | {n, n + 1, n + 2}
        assert set(trainer.valid_idx) == set(np.flatnonzero(folds == k)) and trainer.valid_idx.max() < n
        assert [p.name for p in trainer.train_ds.paths[n:]] == ["t00.png", "t01.png", "t02.png"]
        assert all(p.parent.name == "test" for p in trainer.train_ds.paths[n:])
        np.testing.assert_allclose(trainer.mixer.labels[n:].numpy(), soft, atol=1e-6)
        np.testing.assert_array_equal(trainer.mixer.labels[:n].numpy().argmax(1), table.targets)
        assert trainer.valid_ds.targets.tolist() == table.targets.tolist()  # validation keeps the real labels


def test_teacher_rows_follow_ids_and_classes_not_file_order(comp_dir, tmp_path):
    cfg = student_cfg(comp_dir)
    teacher = make_teacher(tmp_path, cfg)
    oof = pd.read_csv(teacher / "oof.csv", dtype={"id": str, "target": str})
    shuffled = oof[["id", "fold", "target", "c2", "c0", "c1"]].sample(frac=1, random_state=0)
    shuffled.to_csv(teacher / "oof.csv", index=False)  # rows and class columns in another order
    cfg = cfg.replace(**{"loss.distill.teacher": str(teacher), "loss.distill.temperature": 3.0})
    table = load_train_table(cfg.data)
    run = RunDir(tmp_path / "run")
    folds, _ = plan_folds(cfg, run, table)
    targets = load_training_targets(cfg, table, folds, run)
    trainer = FoldTrainer(FoldContext(cfg, cfg.models[0], table, folds, 0, run, progress=False, soft=targets))
    expected = oof.set_index("id").loc[table.df["id"], CLASSES].to_numpy()
    np.testing.assert_allclose(trainer.mixer.teacher.numpy(), soften(expected, 3.0), atol=1e-6)
    assert isinstance(trainer.loss_fn, DistillLoss) and trainer.loss_fn.temperature == 3.0


def test_a_student_learns_what_its_teacher_says(comp_dir, tmp_path):
    """alpha=1: a teacher whose OOF rows confidently name the next class moves the student's predictions there."""
    cfg = student_cfg(comp_dir, train__epochs=3)
    table = load_train_table(cfg.data)
    teacher = make_teacher(tmp_path, cfg)
    shifted = np.full((len(table.targets), 3), 0.01)
    shifted[np.arange(len(table.targets)), (table.targets + 1) % 3] = 0.98
    oof = pd.read_csv(teacher / "oof.csv", dtype={"id": str, "target": str})
    oof[CLASSES] = shifted  # the training table's order, as make_teacher wrote it
    oof.to_csv(teacher / "oof.csv", index=False)
    over = {"loss.distill.teacher": str(teacher), "loss.distill.alpha": 1.0, "loss.distill.temperature": 1.0}
    comp.train_folds(cfg.replace(**over), tmp_path / "run", progress=False)
    guess = RunDir(tmp_path / "run").read_oof("eff").reorder(table.df["id"]).probs.argmax(1)
    # with the true labels alone (alpha=0) this student gets 0.83 of the rows right and none shifted
    assert (guess == (table.targets + 1) % 3).mean() >= 0.6 > (guess == table.targets).mean()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("id,label\nt00,c9\n", "line 2: label 'c9' in column 'label' is not a class"),
        ("id,label\ng00_0,c0\n", "line 2: id 'g00_0' is also a row of"),
        ("id,label\nt99,c0\n", "line 2: image"),
        ("id,label\nt00,c0\nt00,c1\n", "line 3: duplicate id 't00'"),
        ("id,c0,c1,c2\nt00,0.5,0.2,0.1\n", "line 2: the class probabilities sum to 0.8000"),
        ("id,c0,c1,c2\nt00,0.5,x,0.5\n", "line 2: column 'c1' holds 'x'"),
        ("id,c0,c1\nt00,0.5,0.5\n", "class 'c2' has none"),
        ("id,label,c0,c1,c2\nt00,c0,1,0,0\n", "has both a 'label' column"),
        ("id,guess\nt00,c0\n", "needs a 'label' column (hard labels) or one probability column per class"),
    ],
)
def test_bad_extra_train_files_are_one_line_before_anything_is_written(comp_dir, tmp_path, content, needle):
    (comp_dir / "bad.csv").write_text(content)
    cfg = student_cfg(comp_dir, data__extra_train="bad.csv")
    with pytest.raises(CompError) as info:
        comp.train_folds(cfg, tmp_path / "run", progress=False)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_teacher_on_other_folds_is_refused_before_anything_is_written(comp_dir, tmp_path):
    cfg = student_cfg(comp_dir)
    table = load_train_table(cfg.data)
    planned, _ = plan_folds(cfg, RunDir(tmp_path / "x"), table)
    swapped = planned.copy()
    swapped[[0, int(np.flatnonzero(planned != planned[0])[0])]] = swapped[
        [int(np.flatnonzero(planned != planned[0])[0]), 0]
    ]
    teacher = make_teacher(tmp_path, cfg, folds=swapped)  # two rows trade folds: everything else agrees
    with pytest.raises(CompError, match=r"is in teacher fold \d but in student fold \d \(2 ids differ\)") as info:
        comp.train_folds(cfg.replace(**{"loss.distill.teacher": str(teacher)}), tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(
        main,
        [
            "train-folds",
            "--config",
            str(comp_dir / "exp.yaml"),
            "--run-dir",
            str(tmp_path / "cli"),
            "--set",
            f"loss.distill.teacher={teacher}",
            "--quiet",
        ],
    )
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "teacher fold" in res.output
    assert not (tmp_path / "cli").exists()


def test_teacher_with_other_rows_labels_or_no_test_predictions_is_refused(comp_dir, tmp_path):
    cfg = student_cfg(comp_dir)
    labels = np.asarray(CLASSES, dtype=object)[load_train_table(cfg.data).targets].copy()
    labels[3] = CLASSES[(CLASSES.index(labels[3]) + 1) % 3]
    cases = [
        (make_teacher(tmp_path, cfg, "relabelled", targets=labels), {}, "in the teacher's OOF but label"),
        (
            make_teacher(tmp_path, cfg, "no-test", test=False),
            {"data.extra_train": "pl.csv"},
            "has no test.csv",
        ),
    ]
    write_extra(comp_dir / "pl.csv", {"t00": "c0"})
    fewer = make_teacher(tmp_path, cfg, "fewer")
    oof = pd.read_csv(fewer / "oof.csv", dtype=str)
    oof.iloc[1:].to_csv(fewer / "oof.csv", index=False)
    cases.append((fewer, {}, "its OOF rows are not the training rows"))
    cases.append((tmp_path / "missing", {}, "not found"))
    for teacher, extra, needle in cases:
        over = {"loss.distill.teacher": str(teacher), **{k: str(comp_dir / v) for k, v in extra.items()}}
        with pytest.raises(CompError, match=needle):
            comp.train_folds(cfg.replace(**over), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- training end to end (tiny)


def test_a_student_on_pseudo_rows_and_a_teacher_through_the_cli(comp_dir, config_file, tmp_path, monkeypatch):
    """One tiny run: `comp pseudo` from a teacher, then `train-folds --set loss.distill.teacher=T` (its other keys
    at their defaults) `--set data.extra_train=F`; pseudo rows train every fold and never validate; the run says
    what it trained on; changed pseudo rows cannot continue it; `comp ensemble` takes the student as a member."""
    import comp.data._table as table_mod

    reads: list[tuple[str, str, bool]] = []
    real_load = table_mod.load_image

    def spy(path):
        reads.append((Path(path).parent.name, Path(path).stem, torch.is_grad_enabled()))  # no_grad: validation
        return real_load(path)

    monkeypatch.setattr(table_mod, "load_image", spy)
    teacher = make_teacher(tmp_path, load_config(config_file))
    pl = comp_dir / "pl.csv"
    cli = CliRunner()
    res = cli.invoke(main, ["pseudo", str(teacher.parent.parent), "--out", str(pl), "--top-per-class", "2", "--soft"])
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "student"
    train = ["train-folds", "--config", str(config_file), "--run-dir", str(run_dir), "--quiet",
             "--set", f"loss.distill.teacher={teacher}", "--set", f"data.extra_train={pl}"]  # fmt: skip
    res = cli.invoke(main, train)
    assert res.exit_code == 0, res.output
    run = RunDir(run_dir)
    train_ids = set(pd.read_csv(comp_dir / "train.csv", dtype=str)["id"])
    pseudo_ids = set(pd.read_csv(pl, dtype=str)["id"])
    assert len(pseudo_ids) == 6 and not pseudo_ids & train_ids
    # every fold's validation rows are labelled rows, and together they are exactly the labelled rows
    seen: list[str] = []
    for k in range(2):
        part = pd.read_csv(run.oof_part("eff", k), dtype={"id": str})
        assert set(part["id"]) <= train_ids and (part["fold"] == k).all()
        seen += list(part["id"])
    assert sorted(seen) == sorted(train_ids)
    assert set(run.read_oof("eff").ids) == train_ids and set(run.read_folds()["id"]) == train_ids
    # the pseudo rows' images (from the test folder) were read for training in both folds, never to validate
    trained_on = [stem for folder, stem, grad in reads if folder == "test" and grad]
    assert set(trained_on) == pseudo_ids and len(trained_on) == 2 * len(pseudo_ids)
    assert not [r for r in reads if r[0] == "test" and not r[2]]
    # the metrics say which rows and soft targets were used
    metrics = json.loads(run.metrics("eff").read_text())
    extra, distill = metrics["extra_train"], metrics["distill"]
    assert extra["rows"] == 6 and extra["labels"] == "soft" and extra["path"] == str(pl.resolve())
    assert extra["per_class"] == {"c0": 2, "c1": 2, "c2": 2} and len(extra["sha256"]) == 64
    assert distill["teacher"] == str(teacher.resolve()) and (distill["alpha"], distill["temperature"]) == (
        0.5,
        2.0,
    )
    assert len(distill["teacher_oof_sha256"]) == 64 and len(distill["teacher_test_sha256"]) == 64
    assert json.loads(run.sources.read_text()) == {"extra_train": extra, "distill": distill}
    # the same paths with other contents cannot continue a run whose folds were trained on the old ones
    write_extra(pl, {"t00": "c1"})
    res = cli.invoke(main, train)
    assert res.exit_code == 2 and "trained folds on other extra_train contents" in res.output
    blend = cli.invoke(main, ["ensemble", str(teacher), str(run_dir / "models/eff"), "--method", "mean", "--name", "b"])
    assert blend.exit_code == 0, blend.output
    saved = json.loads((tmp_path / "b/models/b/metrics.json").read_text())
    assert saved["members"] == [str(teacher.resolve()), str((run_dir / "models/eff").resolve())]
