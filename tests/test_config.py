import pytest
import yaml

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
        ({"metric": "f1"}, "unknown metric 'f1'; choose from"),
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
