"""Training progress in a notebook with ipywidgets, with IPython's display replaced by a recorder: one widget bar
per fold reset every epoch, one live table per fold updated in place, one summary; a handful of display calls in
all, whatever the number of epochs and steps."""

from __future__ import annotations

import sys
import types

import pytest

from comp.config import load_config
from comp.training import train_folds
from tests.conftest import tiny_config, write_config

pytest.importorskip("ipywidgets")
pytest.importorskip("IPython")


class Handle:
    def __init__(self, log: list, obj):
        self.log, self.obj, self.updates = log, obj, 0

    def update(self, obj) -> None:
        self.obj = obj
        self.updates += 1
        self.log.append(("update", obj))


class Recorder:
    """Stands in for ``IPython.display.display``: records each call and hands out display handles."""

    def __init__(self):
        self.calls: list = []
        self.handles: list[Handle] = []

    def __call__(self, *objs, display_id=None, **kwargs):
        self.calls.append(("display", objs))
        if display_id:
            self.handles.append(Handle(self.calls, objs[0]))
            return self.handles[-1]
        return None


@pytest.fixture
def notebook(monkeypatch):
    """This process looks like a kernel with ipywidgets; what comp displays is recorded."""
    import IPython.display
    import tqdm.notebook

    from comp import _progress

    kernel = types.ModuleType("ipykernel")
    kernel.version_info = (7, 0, 0)  # type: ignore[attr-defined]  # ipywidgets asks; no comm shim needed
    monkeypatch.setitem(sys.modules, "ipykernel", kernel)
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=object()))  # a running kernel
    monkeypatch.setattr(_progress, "_PLAIN_INTERVAL", None)
    rec = Recorder()
    monkeypatch.setattr(IPython.display, "display", rec)  # EpochBoard's tables
    monkeypatch.setattr(tqdm.notebook, "display", rec)  # tqdm's widget bars
    yield rec
    assert _progress._SLOTS == {}, "every fold's bar is released"


def test_one_widget_bar_and_one_table_per_fold(notebook, comp_dir, tmp_path):
    import ipywidgets
    from IPython.display import HTML

    epochs, n_folds = 2, 2
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir, train__epochs=epochs)))
    train_folds(cfg, tmp_path / "run")
    displayed = [objs[0] for kind, objs in notebook.calls if kind == "display"]
    bars = [o for o in displayed if isinstance(o, ipywidgets.Widget)]
    tables = [o for o in displayed if isinstance(o, HTML)]
    assert len(bars) == n_folds  # one widget per fold, not one per epoch (nor per step)
    for bar in bars:  # the bar's description names the fold's last epoch, its progress full
        label, progress, _ = bar.children
        assert f"epoch {epochs}/{epochs}" in label.value.replace("\u2007", " ") and progress.value == progress.max > 0
        assert progress.bar_style == "success"  # closed at the fold's end, left on screen
    assert len(tables) == n_folds + 1  # each fold's per-epoch table, then the summary of the folds
    fold_tables = [h for h in notebook.handles if "fold" in h.obj.data and "<b>folds</b>" not in h.obj.data]
    assert [h.updates for h in fold_tables] == [epochs - 1] * n_folds  # updated in place after every later epoch
    assert all(f"{epochs}/{epochs}" in h.obj.data and "img/s" in h.obj.data for h in fold_tables)
    summary = [h for h in notebook.handles if "<b>folds</b>" in h.obj.data]
    assert len(summary) == 1 and summary[0].obj.data.count("<tr") == 1 + n_folds
    assert len(notebook.calls) <= 3 * n_folds + 2 * n_folds * epochs  # a handful, whatever the steps per epoch


def test_a_failed_fold_releases_its_bar(notebook, comp_dir, tmp_path, monkeypatch):
    from comp import _progress
    from comp.training import _fold

    def boom(self, epoch):
        _progress.Progress(5, "eff fold 0 epoch 1/1", slot=self._slot).update(2)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(_fold.FoldTrainer, "run_epoch", boom)
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir)))
    with pytest.raises(RuntimeError, match="out of memory"):
        train_folds(cfg, tmp_path / "run", folds=[0])
    bars = [objs[0] for kind, objs in notebook.calls if kind == "display" and not hasattr(objs[0], "data")]
    assert len(bars) == 1 and bars[0].children[1].bar_style == "danger"  # left showing where it stopped


def test_a_process_that_imported_ipykernel_is_not_a_notebook(monkeypatch):
    """A test run or a library may import ipykernel; only a running kernel's shell makes comp display widgets."""
    import IPython

    from comp import _progress

    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not _progress._in_notebook()
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=object()))
    assert _progress._in_notebook()
