"""Valid inputs the hostile sweep found refused or quietly changed: YAML merge keys, a section given to --set,
labels with stray spaces. Each must now load, train and read as the user meant."""

from __future__ import annotations

import pandas as pd
import yaml
from click.testing import CliRunner
from conftest import tiny_config, write_competition, write_config

from comp.cli import main
from comp.config import load_config


def test_yaml_merge_keys_build_similar_models(tmp_path):
    text = """
models:
  - &eff {name: test_efficientnet, id: eff, image_size: 32, lr: 0.01, epochs: 2}
  - {<<: *eff, id: eff2, lr: 0.02}
  - <<: *eff
    id: eff3
train:
  <<: [{epochs: 3, lr: 0.5}, {epochs: 4, batch_size: 8}]
  lr: 0.1
"""
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(tmp_path / "c.yaml")
    assert [m.model_id for m in cfg.models] == ["eff", "eff2", "eff3"]
    assert [cfg.train_for(m).lr for m in cfg.models] == [0.01, 0.02, 0.01]  # an explicit key overrides a merged one
    assert all(cfg.train_for(m).epochs == 2 and m.image_size == 32 for m in cfg.models)
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (3, 0.1, 8)  # the first merged mapping wins


def test_set_with_a_mapping_merges_into_the_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "train": {"epochs": 5, "lr": 0.5, "batch_size": 4},
                "augment": {"mixup": {"prob": 0.5, "mixup_alpha": 0.2}},
            }
        )
    )
    cfg = load_config(path, overrides=["train={epochs: 1}", "augment={mixup: {prob: 0.25}}"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (1, 0.5, 4)
    assert (cfg.augment.mixup.prob, cfg.augment.mixup.mixup_alpha) == (0.25, 0.2)
    assert load_config(path, overrides={"train": {"lr": 0.1}}).train.epochs == 5  # the Python API's mapping too
    layout = {"folder": "a/*", "files": "*.png"}
    cfg = load_config(path, overrides=[f"data.layout={layout}", "data.layout={folder: 'b/*'}"])
    assert cfg.data.layout == {"folder": "b/*"}  # a free-form mapping is replaced whole, as before


def test_labels_with_surrounding_spaces_are_one_class(tmp_path, caplog):
    root = write_competition(tmp_path / "comp")
    df = pd.read_csv(root / "train.csv", dtype=str)
    df.loc[::4, "label"] = df.loc[::4, "label"] + " "  # 'c0 ' and 'c0' in one column
    df.loc[1, "label"] = "  " + df.loc[1, "label"]
    df.to_csv(root / "train.csv", index=False)
    result = CliRunner().invoke(
        main, ["train-folds", "--config", write_config(root, tiny_config(root)), "--run-dir", tmp_path / "run"]
    )
    assert result.exit_code == 0, result.output
    oof = pd.read_csv(tmp_path / "run/models/eff/oof.csv", dtype=str)
    assert list(oof.columns[3:]) == ["c0", "c1", "c2"] and set(oof["target"]) == {"c0", "c1", "c2"}
    assert "stripped surrounding whitespace from 10 labels" in result.output
