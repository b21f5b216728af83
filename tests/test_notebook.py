"""The README's notebook workflow, executed end to end by nbconvert in a real kernel: results render as HTML,
no cell floods its output, a changed config reruns with exist_ok="overwrite", a changed tune space is refused,
a CompError shows one line, and the predictor's numbers are comp predict's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
    "from pathlib import Path\n"
    "import comp\n"
    "from tests.conftest import tiny_config, write_competition, write_config\n"
    "root = write_competition(Path('comp'))\n"
    "raw = tiny_config(root, train__epochs=2)\n"
    "raw['tune'] = {'space': {'train.lr': {'type': 'float', 'low': 1e-3, 'high': 5e-2, 'log': True}}}\n"
    "cfg = comp.load_config(write_config(root, raw))\n"
    "cfg",
    "result = comp.train_folds(cfg, 'runs/nb')\nresult",
    "changed = cfg.replace(**{'train.lr': 0.005})\n"
    "try:\n    comp.train_folds(changed, 'runs/nb')\n"
    "except comp.CompError as exc:\n    refused = str(exc)\n"
    "assert \"exist_ok='overwrite'\" in refused and '--' not in refused, refused\n"
    "result = comp.train_folds(changed, 'runs/nb', exist_ok='overwrite')\n"
    "assert comp.RunDir('runs/nb').load_config().train.lr == 0.005\n"
    "result.history('eff', 0)",
    "comp.RunDir('runs/nb')",
    "comp.train_folds(changed, 'runs/nb', exist_ok='error')",  # raises: one line
    "study = comp.tune(cfg, 'runs/tune', n_trials=2, pruner='none', folds=[0], epochs=1)\nstudy",
    "wider = cfg.replace(tune={'space': {'train.lr': {'type': 'float', 'low': 1e-3, 'high': 0.1, 'log': True}}})\n"
    "comp.tune(wider, 'runs/tune', n_trials=3, pruner='none', folds=[0], epochs=1)",  # raises: another space
    "predictor = comp.load_predictor('runs/nb')\n"
    "predictor.predict_proba('comp/test').to_csv('proba.csv', index=False)\n"
    "predictor.predict('comp/test').to_csv('labels.csv', index=False)\n"
    "predictor",
]
RAISES = {4, 6}


@pytest.mark.slow
def test_the_readme_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    for i, src in enumerate(CELLS):
        cell = nbformat.v4.new_code_cell(src)
        if i in RAISES:
            cell.metadata["tags"] = ["raises-exception"]
        nb.cells.append(cell)
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", env_path)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    for i, cell in enumerate(nb.cells):
        assert len(cell.outputs) <= 30, (i, len(cell.outputs), cell.outputs[:5])
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        assert len(text) < 20_000 and "INFO:comp" not in text, (i, text[:2000])
    try:
        import ipywidgets  # noqa: F401

        widgets = True
    except ImportError:
        widgets = False
    for i, n_bars in ((1, 2), (2, 2)):  # training cells: one progress widget per fold (2), not one per epoch
        views = [o for o in nb.cells[i].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        folds = [o for o in views if " fold " in o["data"].get("text/plain", "")]
        assert len(folds) == (n_bars if widgets else 0), (i, [o["data"].get("text/plain") for o in views])
        assert len(views) <= n_bars + 3, (i, [o["data"].get("text/plain") for o in views])  # + one per short stage
    html = [i for i, c in enumerate(nb.cells) if any("text/html" in o.get("data", {}) for o in c.outputs)]
    assert {0, 1, 2, 3, 5, 7} <= set(html), html  # Config, TrainResult, history, RunDir, TuneResult, Predictor
    for i in RAISES:
        errors = [o for o in nb.cells[i].outputs if o.output_type == "error"]
        assert len(errors) == 1 and len(errors[0].traceback) == 1, errors
        assert errors[0].traceback[0].startswith(("CompError", "ConfigError")), errors[0].traceback
    assert "already exists" in nb.cells[4].outputs[-1].traceback[0]
    assert "another search space" in nb.cells[6].outputs[-1].traceback[0]
    # the old study is untouched: its two trials, its best_config.yaml
    assert len(pd.read_csv(tmp_path / "runs/tune/trials.csv")) == 2
    # the predictor's numbers are comp predict's on the same images
    from comp.cli import main

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["predict", "runs/nb", "--out", "sub.csv", "--quiet"])
    assert res.exit_code == 0, res.output
    proba = pd.read_csv(tmp_path / "proba.csv").set_index("id")
    test = pd.read_csv(tmp_path / "runs/nb/models/eff/test.csv").set_index("id")
    cols = [c for c in proba.columns]
    pd.testing.assert_frame_equal(proba.loc[test.index, cols], test[cols], atol=1e-5, check_dtype=False)
    labels = pd.read_csv(tmp_path / "labels.csv").set_index("id")
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("id")
    assert labels.loc[sub.index, "label"].tolist() == sub["label"].tolist()
    assert sys.modules.get("comp") is not None
