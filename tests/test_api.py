"""The Python API as a notebook user drives it: `import comp` only, in a fresh interpreter, and the caller's
session (matplotlib backend, Optuna verbosity, PIL flags, logging, stdout) is left as it was."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import write_competition

SCRIPT = textwrap.dedent(
    """
    import io, logging, sys, warnings
    from contextlib import redirect_stdout
    from pathlib import Path

    import matplotlib
    matplotlib.use("pdf")                      # the caller's own backend
    import optuna
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    from PIL import ImageFile
    ImageFile.LOAD_TRUNCATED_IMAGES = True     # the caller's own PIL setting
    root_handlers = list(logging.getLogger().handlers)

    import comp

    root = Path(sys.argv[1])
    out = io.StringIO()
    with redirect_stdout(out):
        cfg = comp.load_config(
            base_dir=root, seed=0, metric="accuracy",
            data={"group_column": "person", "image_ext": ".png"},
            folds={"n_splits": 3, "seed": 0},
            train={"epochs": 1, "batch_size": 8, "lr": 0.01, "max_steps_per_epoch": 2},
            models=[{"name": "test_efficientnet", "id": "eff", "image_size": 32},
                    {"name": "test_byobnet", "id": "byob", "image_size": 32}],
            tune={"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}},
        )
        assert isinstance(cfg, comp.Config) and cfg.train.epochs == 1
        cfg2 = cfg.replace(**{"train.epochs": 2})
        assert cfg2.train.epochs == 2 and cfg.train.epochs == 1

        result = comp.train_folds(cfg, root / "run", progress=False)
        oof = result.oof("eff")
        assert list(oof.columns[:3]) == ["id", "fold", "target"] and len(oof) == 36
        assert sorted(oof["fold"].unique()) == [0, 1, 2]
        assert set(result.models) == {"eff", "byob"} and all(m.cv is not None for m in result.models.values())

        run = comp.RunDir(root / "run")
        assert run.read_metrics("eff").cv == result.models["eff"].cv
        reports = comp.export(root / "run", models=["eff"])
        assert reports["eff"]["files"][0]["max_abs_diff"] <= 1e-4
        pred = comp.predict(root / "run", tta=["hflip"], out=root / "sub.csv", progress=False)
        assert pred.submission == root / "sub.csv" and len(pred.test("eff")) == 8

        eda = comp.eda(cfg, root / "eda")                  # figures come back; the report's files are written too
        from matplotlib.figure import Figure
        assert set(eda.figures) == {Path(p).stem for p in eda.plots} >= {"class_counts", "group_sizes"}
        assert all(isinstance(f, Figure) and f.axes for f in eda.figures.values())
        assert eda._repr_html_().count("data:image/png;base64,") == len(eda.plots)
        assert all((root / "eda" / p).is_file() for p in eda.plots)
        ex = comp.explain(root / "run", model_id="eff", top=2, out_dir=root / "explain")
        assert {"confusion", "mistakes", "gradcam"} <= set(ex.figures) and all(f.axes for f in ex.figures.values())
        assert ex._repr_html_().count("<img") == len(ex.figures) and (root / "explain" / "confusion.png").is_file()

        blend = comp.blend([run.model_dir("eff"), run.model_dir("byob")], method="mean", out=root / "blend.csv")
        assert blend.submission is not None and blend.submission.is_file()
        tuned = comp.tune(cfg, root / "tune", n_trials=2, pruner="none", folds=[0])
        assert tuned.n_trials == 2 and tuned.best_config is not None

        try:
            comp.load_config(train={"epoch": 3})
        except comp.ConfigError as exc:
            assert "did you mean 'epochs'" in str(exc)
        else:
            raise AssertionError("a typo must raise")

    assert out.getvalue() == "", out.getvalue()              # the library prints nothing
    assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
    if "matplotlib.pyplot" in sys.modules:                  # (optuna's plots for tune go through pyplot)
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []   # no figure left in pyplot's list
    assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert logging.getLogger().handlers == root_handlers
    assert "comp.cli" not in sys.modules                    # the API never goes through the CLI
    print("ok")
    """
)


def test_whole_pipeline_through_import_comp_leaves_the_session_alone(tmp_path):
    root = write_competition(tmp_path / "competition")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "ok"


def test_facade_is_curated_and_lazy():
    code = (
        "import sys, comp; assert 'torch' not in sys.modules, 'import comp must stay light'; "
        "names = set(comp.__all__); "
        "assert {'load_config', 'train_folds', 'predict', 'export', 'blend', 'compare_blends', 'tune', "
        "'make_submission', 'RunDir', 'CompError', '__version__'} <= names; "
        "[getattr(comp, n) for n in comp.__all__]; print(comp.__version__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
