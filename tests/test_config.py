import importlib
import re
import shutil

import pytest
import yaml
from conftest import tiny_config, write_competition
from mask_contest import LABELS, RECIPE, TINY, write_mask_contest

from comp.config import Config, apply_overrides, load_config
from comp.errors import CompError


def write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_validate(tmp_path):
    cfg = load_config(write(tmp_path, {}))
    assert cfg.folds.n_splits == 5 and cfg.metric == "macro_f1"


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"trian": {}}, "unknown config key 'trian' (did you mean 'train'?)"),
        ({"train": {"epoch": 3}}, "unknown config key 'train.epoch' (did you mean 'epochs'"),
        ({"train": {"epochs": "three"}}, "config key 'train.epochs' must be int"),
        ({"train": {"epochs": True}}, "config key 'train.epochs' must be int"),
        ({"folds": {"n_splits": 1}}, "'folds.n_splits' must be >= 2, got n_splits=1"),
        ({"train": {"optimizer": "adam"}}, "must be one of adamw, sgd"),
        ({"models": []}, "must list at least one model"),
        ({"models": [{"name": "a", "lrr": 1}]}, "unknown config key 'models[0].lrr' (did you mean 'lr'?)"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "model id 'a' is used twice"),
        ({"loss": {"class_weights": "auto"}}, "loss.class_weights"),
        ({"augment": {"mixup": {"prob": 2}}}, "augment.mixup.prob"),
        ({"data": 3}, "config key 'data' must be a mapping"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, data, needle):
    with pytest.raises(CompError) as exc:
        load_config(write(tmp_path, data))
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(CompError, match="not valid YAML"):
        load_config(p)


def test_overrides_and_model_entry_overrides(tmp_path):
    p = write(tmp_path, {"models": [{"name": "resnet18", "lr": 0.5}, "test_vit"]})
    cfg = load_config(
        p, overrides=["train.epochs=3", "train.lr=1e-4", "models.1.image_size=[16, 24]", "data.group_column=person"]
    )
    assert cfg.train.epochs == 3 and cfg.data.group_column == "person"
    assert cfg.train_for(cfg.models[0]).lr == 0.5
    assert cfg.train_for(cfg.models[1]).lr == 1e-4
    assert cfg.models[1].image_size == [16, 24]


@pytest.mark.parametrize(
    "item, needle",
    [("train.epochs", "key=value"), ("trainn.epochs=3", "unknown section 'trainn'"), ("models.7.lr=1", "not an index")],
)
def test_bad_overrides(item, needle):
    with pytest.raises(CompError, match=needle):
        apply_overrides(Config().to_dict(), [item])


def test_relative_paths_resolve_against_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"train_csv": "d/train.csv", "image_dir": "/abs/img"}}))
    cfg = load_config(p)
    assert cfg.data.train_csv == str((tmp_path / "sub" / "d" / "train.csv").resolve())
    assert cfg.data.image_dir == "/abs/img"


# ---------------------------------------------------------------- registry names: checked by the stage that owns them

HEAD_LOSS = {
    "data": {"labels": LABELS},
    "models": [{"name": "test_efficientnet", "heads": "attributes"}],
    "loss": {"attributes": {"age": {"name": "facal"}}},
}
NAMES = [
    ({"metric": "f1"}, "comp.metrics", "unknown metric 'f1'; choose from"),
    ({"loss": {"name": "bcee"}}, "comp.training._losses", "unknown loss 'bcee'; choose from"),
    (HEAD_LOSS, "comp.training._losses", "unknown loss in 'loss.attributes.age.name' 'facal'; choose from"),
    ({"predict": {"tta": ["hflipp"]}}, "comp.inference._tta", "unknown TTA view 'hflipp'; choose from"),
]


@pytest.mark.parametrize("data, owner, needle", NAMES, ids=["metric", "loss", "head-loss", "tta"])
def test_registry_names_are_checked_by_their_owner(tmp_path, data, owner, needle):
    cfg = load_config(write(tmp_path, data))  # config checks shape only: a name is a string
    with pytest.raises(CompError) as exc:
        importlib.import_module(owner).check_config(cfg)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


@pytest.mark.parametrize("overrides, needle", [(["metric=f1"], NAMES[0][2]), (["loss.name=bcee"], NAMES[1][2])])
def test_train_folds_refuses_unknown_names_before_any_write(tmp_path, overrides, needle):
    from comp.training import train_folds

    root = write_competition(tmp_path / "comp")
    cfg = load_config(tiny_config(root), overrides=overrides, base_dir=root)
    with pytest.raises(CompError, match=re.escape(needle)):
        train_folds(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_train_folds_refuses_an_unknown_head_loss_before_any_write(tmp_path):
    from comp.training import train_folds

    root = write_mask_contest(tmp_path / "mask")
    shutil.copy(RECIPE, root / "mask.yaml")
    cfg = load_config(root / "mask.yaml", overrides=[*TINY, "loss.attributes.age.name=facal"])
    with pytest.raises(CompError, match=re.escape(NAMES[2][2])):
        train_folds(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_tune_refuses_an_unknown_loss_in_its_space_before_any_write(tmp_path):
    from comp.tuning import tune

    root = write_competition(tmp_path / "comp")
    space = {"loss.name": {"type": "categorical", "choices": ["ce", "bcee"]}}
    cfg = load_config(tiny_config(root, tune={"space": space}), base_dir=root)
    with pytest.raises(CompError, match="unknown loss 'bcee'; choose from"):
        tune(cfg, tmp_path / "tune", n_trials=1)
    assert not (tmp_path / "tune").exists()
