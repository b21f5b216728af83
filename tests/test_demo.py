"""The demo end to end at a reduced size (the full-size run is marked slow)."""

import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from comp.cli import main
from comp.demo import make_digits_competition


def test_demo_competition_has_groups_and_grayscale(tmp_path):
    from PIL import Image

    root = make_digits_competition(tmp_path / "d", n_train_groups=20, views=3, n_test=10)
    train = pd.read_csv(root / "train.csv", dtype=str)
    assert len(train) == 60 and train["digit"].nunique() == 20
    assert train.groupby("digit")["label"].nunique().max() == 1  # a group is one digit
    assert Image.open(root / "train" / f"{train['id'][0]}.png").mode == "L"
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sample.columns) == ["id", "label"] and len(sample) == 10


@pytest.mark.parametrize("size", ["small"])
def test_demo_cli_runs_pipeline(tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--set", "train.epochs=1", "--set", "folds.n_splits=2", "--set", "train.max_steps_per_epoch=2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs/demo/models/byobnet/oof.csv").is_file()
    assert (tmp_path / "runs/demo/models/effnet/oof.csv").is_file()
    assert "demo-blend" in res.output
    sub = pd.read_csv(tmp_path / "submissions/demo.csv", dtype=str)
    sample = pd.read_csv(tmp_path / "demo_data/sample_submission.csv", dtype=str)
    assert list(sub["id"]) == list(sample["id"]) and set(sub["label"]) <= {str(d) for d in range(10)}
    assert (tmp_path / "runs/demo/models/byobnet/test.csv").is_file()


def test_help_stays_light():
    # every command's --help, choices included, without torch, numpy or the registries beside them
    code = (
        "import sys; from click.testing import CliRunner; from comp.cli import main; "
        "assert all(CliRunner().invoke(main, [*c, '--help']).exit_code == 0 for c in [[], *([c] for c in main.commands)]); "
        "heavy = [m for m in ('torch', 'numpy', 'pandas') if m in sys.modules]; assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_every_help_example_runs_as_written(tmp_path, monkeypatch):
    """The `Example:` line of every command's --help, run as written after `comp demo` (submit and weights need
    the internet).
    The first, `comp demo`, is the full demo: this test is also the end-to-end run of the whole pipeline."""
    import shlex
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "configs").mkdir()
    shutil.copy(repo / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    (tmp_path / "comp" / "configs").mkdir(parents=True)
    shutil.copy(repo / "comp" / "configs" / "demo.yaml", tmp_path / "comp" / "configs" / "demo.yaml")
    monkeypatch.chdir(tmp_path)
    # bundle and pseudo read the demo's blend, whose members' test.csv `predict --tta hflip` rewrites (bundle then
    # rightly refuses a blend whose members' predictions changed since it was made): they run before predict
    order = [
        "demo",
        "init",
        "bundle",
        "pseudo",
        "train-folds",
        "predict",
        "export",
        "ensemble",
        "explain",
        "eda",
        "bench-data",
        "tune",
        "runs",
    ]
    assert set(order) | {"submit", "weights"} == set(main.commands)  # those two need the internet
    for name in order:
        assert f"Example: comp {name}" in CliRunner().invoke(main, [name, "--help"]).output
        # the line as written in the command's help: --help wraps at a hyphen (--batch-\nsizes), so not from there
        example = main.commands[name].help.split("Example: ", 1)[1].splitlines()[0].strip()
        argv = shlex.split(example)
        assert argv[:2] == ["comp", name], example
        res = CliRunner().invoke(main, argv[1:])
        assert res.exit_code == 0, (example, res.output, res.exception)
        if name == "demo":  # `comp demo` as written is the full demo: the whole pipeline to a submission
            sub = pd.read_csv(tmp_path / "submissions/demo.csv", dtype=str)
            sample = pd.read_csv(tmp_path / "demo_data/sample_submission.csv", dtype=str)
            assert list(sub["id"]) == list(sample["id"]) and "demo-blend" in res.output
