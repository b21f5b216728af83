"""Attribute heads: composed probabilities, per-attribute losses, checkpoints, config keys, tables and tuning."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from mask_contest import DISAGREEING, LABELS, N_EVAL, PERSONS, RECIPE, STEMS, TINY, write_mask_contest

from comp.config import LossConfig, ModelConfig, load_config
from comp.data._attributes import compose_probs, marginals, parse_labels
from comp.data._table import load_test_table, load_train_table
from comp.errors import CompError
from comp.run import CheckpointMeta, load_checkpoint, make_checkpoint
from comp.submission._format import label_kind, make_submission, validate_submission
from comp.training._heads import AttributeHeads, AttributeLoss, attribute_heads
from comp.training._losses import LOSSES
from comp.training._models import create_model, heads_description, model_from_checkpoint
from comp.tuning._tune import parse_space

SCHEME = parse_labels(LABELS)


def heads_model(seed: int = 0) -> AttributeHeads:
    torch.manual_seed(seed)
    return attribute_heads(timm.create_model("test_efficientnet", num_classes=0), SCHEME).eval()


def config(root: Path, *overrides: str):
    """The shipped recipe, copied into ``root``, with a tiny model."""
    shutil.copy(RECIPE, root / "mask.yaml")
    return load_config(root / "mask.yaml", overrides=[*TINY, *overrides])


@pytest.fixture
def contest(tmp_path) -> Path:
    return write_mask_contest(tmp_path / "mask")


# ---------------------------------------------------------------- the model and its loss


def test_softmax_of_the_output_is_the_composed_head_probabilities():
    model = heads_model()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        heads = {n: torch.softmax(v, 1).numpy() for n, v in model.head_logits(x).items()}
    assert out.shape == (5, 18)
    probs = torch.softmax(out, 1).numpy()
    np.testing.assert_allclose(probs, compose_probs(heads, SCHEME), atol=1e-6)
    # already normalised log-probabilities
    np.testing.assert_allclose(np.exp(out.numpy()).sum(1), 1.0, atol=1e-5)
    for name, p in marginals(probs, SCHEME).items():
        np.testing.assert_allclose(p, heads[name], atol=1e-6)


def test_timm_feature_interface_for_grad_cam():
    model = heads_model()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
    for f in model.feature_info:
        assert model.get_submodule(f["module"]) is not None
    assert model.num_features == model.backbone.num_features


@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_loss_is_the_weighted_sum_of_each_heads_own_loss(loss_name):
    """From the composed output and 18-class soft targets, each head gets exactly its own loss on its own logits."""
    model = heads_model(1).train()
    x = torch.randn(6, 3, 32, 32)
    codes = torch.tensor([0, 4, 17, 9, 12, 5])
    cfg = LossConfig(
        name="ce",
        focal_gamma=1.5,
        attributes={
            "mask": {"name": loss_name, "weight": 0.5, "label_smoothing": 0.1},
            "age": {"weight": 2.0, "class_weights": [1.0, 2.0, 3.0]},
        },
    )
    train = {n: np.array([0, 1, 2, 1]) for n in SCHEME.names}
    loss_fn = AttributeLoss(SCHEME, cfg, train)
    got = loss_fn(model(x), F.one_hot(codes, 18).float())
    logits = model.head_logits(x)
    want = 0.0
    for j, name in enumerate(SCHEME.names):
        y = torch.as_tensor(SCHEME.combos[codes.numpy(), j])
        k = logits[name].shape[1]
        eps = {"mask": 0.1}.get(name, 0.0)
        soft = F.one_hot(y, k).float() * (1 - eps) + eps / k
        logp = torch.log_softmax(logits[name], 1)
        per = -soft * logp
        if name == "mask" and loss_name == "focal":
            per = per * (1 - logp.exp()) ** 1.5
        if name == "age":
            w = torch.tensor([1.0, 2.0, 3.0])
            term = (per * w).sum() / (soft * w).sum()
        else:
            term = per.sum(1).mean()
        want = want + {"mask": 0.5, "age": 2.0}.get(name, 1.0) * term
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g_got = torch.autograd.grad(got, list(model.heads.parameters()), retain_graph=True)
    g_want = torch.autograd.grad(want, list(model.heads.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_mixed_targets_give_mixed_attribute_targets():
    """A MixUp of two classes is, per attribute, the same mix of their values: the loss is linear in the target."""
    loss_fn = AttributeLoss(SCHEME, load_config({}).loss, {n: np.array([0, 1]) for n in SCHEME.names})
    out = torch.log_softmax(torch.randn(1, 18), 1)
    a, b = F.one_hot(torch.tensor([3]), 18).float(), F.one_hot(torch.tensor([14]), 18).float()
    torch.testing.assert_close(loss_fn(out, 0.3 * a + 0.7 * b), 0.3 * loss_fn(out, a) + 0.7 * loss_fn(out, b))


def test_checkpoint_rebuilds_the_heads(tmp_path):
    model = heads_model(2)
    meta = CheckpointMeta(
        "test_efficientnet",
        "m",
        [f"c{i}" for i in range(18)],
        (32, 32),
        [0.5] * 3,
        [0.5] * 3,
        {},
        {},
        fold=0,
        heads=heads_description(model),
    )
    torch.save(make_checkpoint(model.state_dict(), meta), tmp_path / "fold0.pt")
    rebuilt, ckpt = model_from_checkpoint(load_checkpoint(tmp_path / "fold0.pt"))
    assert isinstance(rebuilt, AttributeHeads) and rebuilt.attributes == [
        ("mask", 3),
        ("gender", 2),
        ("age", 3),
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert heads_description(timm.create_model("test_resnet", num_classes=3)) is None


def test_create_model_picks_heads_from_the_entry_and_freezes_only_the_backbone():
    from comp.training._models import head_parameters, normalization

    entry = ModelConfig("test_efficientnet", heads="attributes")
    model = create_model(entry, 18, scheme=SCHEME)
    assert isinstance(model, AttributeHeads)
    assert normalization(model) == normalization(timm.create_model("test_efficientnet"))
    assert head_parameters(model) == {id(p) for p in model.heads.parameters()}
    with pytest.raises(CompError, match="data.labels"):
        create_model(entry, 18)
    torch.manual_seed(0)
    model = create_model(entry, 18, scheme=SCHEME)
    torch.manual_seed(0)
    plain = create_model(ModelConfig("test_efficientnet"), 18, scheme=SCHEME)
    assert not isinstance(plain, AttributeHeads) and plain.num_classes == 18
    # under one seed the backbone starts from the single-head model's weights
    backbone = model.backbone.state_dict()
    assert backbone and all(torch.equal(v, plain.state_dict()[k]) for k, v in backbone.items())


@pytest.mark.parametrize("heads", ["single", "attributes"])
def test_fold_trainer_fits_the_training_labels(contest, tmp_path, heads):
    from comp.run import RunDir
    from comp.training._context import FoldContext
    from comp.training._fold import FoldTrainer

    cfg = config(contest, f"models.0.heads={heads}", "loss.label_smoothing=0.1")
    table = load_train_table(cfg.data)
    folds = np.arange(len(table.targets)) % 2
    trainer = FoldTrainer(FoldContext(cfg, cfg.models[0], table, folds, 0, RunDir(tmp_path / "run"), progress=False))
    moved = table.train_targets != table.targets
    assert moved.sum() == len(STEMS)  # the 59-year-old's photos
    np.testing.assert_array_equal(trainer.train_ds.targets, table.train_targets)
    assert isinstance(trainer.loss_fn, AttributeLoss) == (heads == "attributes")
    # heads smooth their own targets; an 18-way head smooths in the mixer
    assert trainer.mixer.smoothing == (0.0 if heads == "attributes" else 0.1)


# ---------------------------------------------------------------- config keys


@pytest.mark.parametrize(
    "changes, needle",
    [
        (
            {"models.0.heads": "attributes", "data.labels": None},
            "'models[0].heads' is 'attributes' but data.labels",
        ),
        ({"models.0.heads": "multi"}, "must be one of single, attributes"),
        (
            {"loss.attributes": {"agee": {"weight": 2}}},
            "no attribute 'agee' in data.labels (did you mean 'age'?)",
        ),
        ({"loss.attributes": {"age": {"wieght": 2}}}, "unknown config key 'loss.attributes.age.wieght'"),
        ({"loss.attributes": {"age": {"weight": -1}}}, "'loss.attributes.age.weight' must be >= 0"),
        (
            {"loss.attributes": {"age": {"class_weights": [1, 2]}}},
            "'loss.attributes.age.class_weights' must list 3",
        ),
        ({"loss.attributes": {"age": 3}}, "'loss.attributes.age' must be a mapping"),
        (
            {"loss.class_weights": [1.0] * 18},
            "'loss.class_weights' (inherited by loss.attributes.mask) must list 3",
        ),
        ({"data.classes": ["a", "b"]}, "'data.classes' and 'data.labels' are both set"),
        ({"data.labels": {"attributes": {"age": {"values": ["young"]}}}}, "must list two or more values"),
        ({"data.layout": {"csv": "train/train.csv"}}, "'data.layout.folder' is missing"),
        (
            {"data.labels": None, "loss.attributes": {"age": {}}, "models.0.heads": "single"},
            "'loss.attributes' needs data.labels",
        ),
    ],
)
def test_bad_keys_are_one_line_errors(contest, changes, needle):
    with pytest.raises(CompError) as info:
        config(contest, *[f"{k}={json.dumps(v)}" for k, v in changes.items()])  # JSON is YAML
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_head_losses_inherit_the_loss_block(contest):
    cfg = config(contest, "loss.label_smoothing=0.2", "loss.name=ce", "loss.attributes.age.focal_gamma=3")
    age, gender, mask = (cfg.loss.head(n) for n in ("age", "gender", "mask"))
    assert (age.name, age.weight, age.label_smoothing, age.focal_gamma) == ("focal", 1.5, 0.2, 3.0)
    assert gender.focal_gamma == 2.0
    assert (gender.name, gender.weight, gender.label_smoothing, gender.class_weights) == (
        "ce",
        1.0,
        0.2,
        "none",
    )
    assert mask.label_smoothing == 0.05
    saved = load_config(cfg)  # the run folder's copy reads back the same
    assert saved.loss.attributes == cfg.loss.attributes and saved.models[0].heads == "attributes"
    # configs saved before the heads key existed still match their run folders
    assert "heads" not in load_config({}).models[0].to_dict()


# ---------------------------------------------------------------- tables from the layout


def test_recipe_reads_the_contest_with_its_quirks(contest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths follow the config's folder, not the working folder
    cfg = config(contest)
    table = load_train_table(cfg.data)
    df = table.df
    assert (
        len(df) == len(PERSONS) * len(STEMS) and df["ImageID"].is_unique and table.classes[17] == "not_wear_female_old"
    )
    # two people share id 1: two groups; the suffixed id is read; the group is the person's folder
    assert sorted(set(table.groups)) == sorted(p[4] for p in PERSONS)
    assert df.loc[df["csv_id"] == "1", "group"].nunique() == 2
    assert "001498-1_female_Asian_30" in set(table.groups)
    # the folder name's gender is the label where the CSV disagrees
    rows = df["group"] == DISAGREEING
    assert (df.loc[rows, "gender"] == "female").all()
    assert (table.attributes.score["gender"][rows.to_numpy()] == 0).all()  # male
    # ages: 59 scores as middle but trains as old (58+); 60 is old either way; 29 young
    by_age = {p[3]: p[4] for p in PERSONS}
    for age, score, train in (("59", "middle", "old"), ("60", "old", "old"), ("29", "young", "young")):
        r = (df["group"] == by_age[age]).to_numpy()
        assert {table.classes[c].rsplit("_", 1)[1] for c in table.targets[r]} == {score}
        assert {table.classes[c].rsplit("_", 1)[1] for c in table.train_targets[r]} == {train}
        assert {SCHEME.attributes[2].values[i] for i in table.attributes.train["age"][r]} == {train}
    # mask1..5 wear, incorrect_mask, normal: 5 + 1 + 1 per person
    mask = table.attributes.score["mask"]
    assert np.bincount(mask).tolist() == [5 * len(PERSONS), len(PERSONS), len(PERSONS)]
    test_df, paths = load_test_table(cfg.data)
    assert len(test_df) == N_EVAL and all(p.is_file() and p.name == i for p, i in zip(paths, test_df["ImageID"]))


def test_image_folder_and_one_row_per_image_layouts_from_the_config(tmp_path):
    from conftest import write_competition

    root = write_competition(tmp_path / "c", n_groups=6, per_group=2)
    classic = load_config({"data": {"group_column": "person"}}, base_dir=root)
    as_layout = load_config(
        {
            "data": {
                "layout": {
                    "csv": "train.csv",
                    "folder": "train",
                    "files": "{id}.png",
                    "id": "{id}",
                    "group": "{person}",
                }
            }
        },
        base_dir=root,
    )
    a, b = load_train_table(classic.data), load_train_table(as_layout.data)
    assert a.classes == b.classes and list(a.paths) == [Path(p) for p in b.df.set_index("id").loc[a.df["id"], "path"]]
    assert sorted(zip(a.df["id"], a.targets, a.groups)) == sorted(zip(b.df["id"], b.targets, b.groups))
    tree = tmp_path / "tree"
    for path, label in zip(a.paths, a.df["label"]):
        (tree / "train" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tree / "train" / label / path.name)
    folders = load_config(
        {"data": {"layout": {"folder": "train/*", "fields": {"folder": "(?P<label>.+)"}}}}, base_dir=tree
    )
    c = load_train_table(folders.data)
    assert c.classes == a.classes and c.df["id"].str.startswith("train/").all() and c.groups is None
    assert sorted(zip(c.df["path"].map(lambda p: Path(p).stem), c.targets)) == sorted(zip(a.df["id"], a.targets))


def test_data_root_points_the_layout_elsewhere(contest, tmp_path):
    (tmp_path / "configs").mkdir()
    shutil.copy(RECIPE, tmp_path / "configs" / "mask.yaml")
    rel = Path("..") / contest.relative_to(tmp_path)
    cfg = load_config(tmp_path / "configs" / "mask.yaml", overrides=[*TINY, f"data.root={rel}"])
    assert cfg.data.root == str(contest.resolve())
    assert len(load_train_table(cfg.data).df) == len(PERSONS) * len(STEMS)
    with pytest.raises(CompError, match="train.csv"):  # without it, the layout is looked for next to the config
        load_train_table(load_config(tmp_path / "configs" / "mask.yaml", overrides=TINY).data)


def test_folds_keep_each_person_together(contest, tmp_path):
    from comp.data._folds import assign_folds

    table = load_train_table(config(contest).data)
    folds = assign_folds(table.targets, table.groups, 2, 0)
    per_person = pd.Series(folds).groupby(table.groups).nunique()
    assert (per_person == 1).all() and len(set(folds)) == 2


def test_eda_shows_each_attribute_and_the_joint_distribution(contest, tmp_path):
    from comp.diagnostics import run_eda

    result = run_eda(config(contest), tmp_path / "eda")
    text = "\n".join(result.summary)
    n = len(PERSONS)
    assert f"attribute mask: wear {5 * n}, incorrect {n}, not_wear {n}" in text
    assert "attribute age: young 14, middle 21, old 7 (training bins: young 14, middle 14, old 14; 7 rows" in text
    joint = pd.read_csv(tmp_path / "eda" / "attributes.csv")
    assert (
        list(joint["mask"]) == ["wear", "incorrect", "not_wear"]
        and joint.drop(columns="mask").to_numpy().sum() == 7 * n
    )
    assert "male_middle" in joint.columns and "attributes.png" in result.plots


# ---------------------------------------------------------------- submissions with class codes


def test_integer_coded_sample_gets_codes_in_its_order(tmp_path):
    ids = ["b.jpg", "a.png", "c.jpeg"]
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(tmp_path / "info.csv", index=False)
    classes = [f"k{i}" for i in range(18)]
    probs = np.eye(18)[[17, 0, 5]]  # predictions arrive in another order than the sample's
    sub = make_submission(["c.jpeg", "b.jpg", "a.png"], probs, classes, tmp_path / "info.csv", "id")
    assert list(sub.columns) == ["ImageID", "ans"] and sub["ImageID"].tolist() == ids
    assert sub["ans"].tolist() == [0, 5, 17] and sub["ans"].dtype.kind == "i"
    validate_submission(sub, tmp_path / "info.csv", classes)
    with pytest.raises(CompError, match="1 labels not among class codes 0..17 \\(first: '18'\\)"):
        validate_submission(sub.assign(ans=[0, 5, 18]), tmp_path / "info.csv", classes)
    with pytest.raises(CompError, match="not among class codes"):
        validate_submission(sub.assign(ans=["k0", "k5", "k17"]), tmp_path / "info.csv", classes)


@pytest.mark.parametrize(
    "values, classes, kind",
    [
        (["0", "0"], ["a", "b"], "codes"),
        (["a", "b"], ["a", "b"], "names"),
        (["0", "3"], ["3", "0"], "names"),
        ([None, None], ["a", "b"], "names"),
    ],
)
def test_label_kind(values, classes, kind):
    assert label_kind(pd.DataFrame({"y": values}), "y", classes) == kind


# ---------------------------------------------------------------- tuning the training boundary


def test_tune_space_reaches_the_training_age_boundary(contest):
    cfg = config(contest)
    raw = cfg.to_dict()
    raw["tune"] = {
        "space": {
            "data.labels.attributes.age.train_bins.1": {"type": "int", "low": 56, "high": 60},
            "loss.attributes.age.weight": {"type": "float", "low": 0.5, "high": 2.0},
        }
    }
    assert set(parse_space(load_config(raw))) == set(raw["tune"]["space"])
    for key, needle in (
        ("data.labels.attributes.age.train_bins.2", "not an index of the 2-entry list"),
        ("data.labels.attributes.agee.bins.0", "'agee' is not a key of data.labels.attributes"),
    ):
        bad = copy.deepcopy(raw)
        bad["tune"]["space"] = {key: {"type": "int", "low": 50, "high": 60}}
        with pytest.raises(CompError, match=needle):
            parse_space(load_config(bad))
    raw["tune"]["space"] = {"data.labels.attributes.age.train_bins.1": {"type": "int", "low": 20, "high": 60}}
    # the low corner [30, 20] fails before any trial
    with pytest.raises(CompError, match="not strictly increasing"):
        parse_space(load_config(raw))


def test_tuned_boundary_trains_on_it_and_scores_the_contest_labels(contest, tmp_path):
    from comp.tuning._tune import tune

    raw = config(contest, "train.max_steps_per_epoch=1").to_dict()
    raw["tune"] = {"space": {"data.labels.attributes.age.train_bins.1": {"type": "categorical", "choices": [55, 60]}}}
    result = tune(load_config(raw), tmp_path / "t", n_trials=2, pruner="none")
    trials = pd.read_csv(tmp_path / "t" / "trials.csv")
    assert result.n_trials == 2 and set(trials["data.labels.attributes.age.train_bins.1"]) <= {55, 60}
    best = load_config(tmp_path / "t" / "best_config.yaml")
    assert best.data.labels["attributes"]["age"]["bins"] == [30, 60]  # the scoring bins never move
    assert (
        best.data.labels["attributes"]["age"]["train_bins"][1]
        == result.best_params["data.labels.attributes.age.train_bins.1"]
    )


def test_a_value_outside_the_attribute_values_names_the_image(contest):
    cfg = config(contest, 'data.labels.attributes.gender.values=["m", "f"]')
    with pytest.raises(CompError) as info:
        load_train_table(cfg.data)
    msg = str(info.value)
    assert "images/000001_female_Asian_45/" in msg and "'female' is not in" in msg and "\n" not in msg, msg
