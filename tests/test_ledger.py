"""The runs ledger: runs, blends and submissions from the run folders; uploads recorded; scores synced from a
fake kaggle API; CV against public score; rebuilt when deleted; safe with several writers."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import shutil
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

import comp
from comp.cli import main
from comp.ledger import collect, sync_scores
from comp.ledger._sync import fetch
from comp.run._submissions import read_submissions, update_submissions
from comp.submission import record_submission


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _now(delta_s: float = 0) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=delta_s)
    return t.isoformat()


class FakeKaggle:
    """kaggle.api stand-in: records uploads and lists them back with scores, as competition_submissions does."""

    def __init__(self, scores: dict[str, float]):
        self.scores, self.uploads = scores, []

    def competition_submit(self, path, message, competition):
        self.uploads.append((Path(path).name, message, competition, _now()))

    def competition_submissions(self, competition, page_size=20):
        return [
            types.SimpleNamespace(
                ref=str(i), file_name=name, date=when, description=msg, status="SubmissionStatus.COMPLETE",
                public_score=str(self.scores[name]), private_score="", 
            )
            for i, (name, msg, comp_name, when) in enumerate(self.uploads)
            if comp_name == competition
        ]  # fmt: skip


@pytest.fixture
def runs(trained_run, tmp_path) -> Path:
    """runs/a (the trained run), runs/b (the same with another learning rate in its config)."""
    root = tmp_path / "runs"
    shutil.copytree(trained_run, root / "a")
    shutil.copytree(trained_run, root / "b")
    cfg = yaml.safe_load((root / "b" / "config.yaml").read_text())
    cfg["train"]["lr"] = 0.02
    (root / "b" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def test_ledger_lists_runs_blends_submissions_and_scores(runs, tmp_path, monkeypatch):
    subs = tmp_path / "subs"
    comp.predict(runs / "a", engine="torch", out=subs / "a.csv", progress=False)
    comp.predict(runs / "b", engine="torch", out=subs / "b.csv", progress=False)
    blend = comp.blend(
        [runs / "a" / "models" / "eff", runs / "b" / "models" / "eff"], method="mean", out=subs / "m.csv"
    )
    assert [r["file"] for r in read_submissions(runs / "a")] == ["a.csv"]
    assert read_submissions(blend.run_dir)[0]["kind"] == "ensemble"

    fake = FakeKaggle({"a.csv": 0.81, "b.csv": 0.74, "m.csv": 0.85})
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=fake))
    for name, run in (("a", "a"), ("b", "b"), ("m", "blend-mean")):  # the three files hold the same bytes here
        result = invoke("submit", subs / f"{name}.csv", "--competition", "toy", "--message", f"run {name}",
                        "--run", runs / run)  # fmt: skip
        assert result.exit_code == 0, result.output
    ups = read_submissions(runs / "b")[0]["uploads"]
    assert len(ups) == 1 and ups[0]["competition"] == "toy" and ups[0]["public"] is None

    result = invoke("runs", runs, "--sync", "--plot")
    assert result.exit_code == 0, result.output
    assert "synced: 3 upload(s)" in result.output and "Pearson r" in result.output
    assert (runs / "ledger-cv-vs-public.png").stat().st_size > 1000
    table = comp.runs(runs)
    by = table.set_index(["run", "model"])
    assert set(by.index) == {("a", "eff"), ("b", "eff"), ("blend-mean", "blend-mean")}
    assert by.loc[("a", "eff"), "folds"] == "2/2" and by.loc[("a", "eff"), "wall_s"] > 0
    assert by.loc[("a", "eff"), "changed"] == "" and by.loc[("b", "eff"), "changed"] == "train.lr=0.02"
    assert by.loc[("blend-mean", "blend-mean"), "kind"] == "blend"
    assert "method=mean" in by.loc[("blend-mean", "blend-mean"), "changed"]
    assert by.loc[("a", "eff"), "public"] == pytest.approx(0.81) and by.loc[("a", "eff"), "submissions"] == 1
    assert by.loc[("blend-mean", "blend-mean"), "public"] == pytest.approx(0.85)
    cv = comp.runs(runs).set_index("run")["cv"]
    assert by.loc[("a", "eff"), "cv"] == pytest.approx(cv["a"])
    sub_table = comp.submissions(runs)
    assert sorted(sub_table["file"]) == ["a.csv", "b.csv", "m.csv"] and sub_table["public"].notna().all()

    # the ledger is a view: deleted, it comes back the same from the run folders
    before = (runs / "ledger.csv").read_text()
    (runs / "ledger.csv").unlink()
    (runs / "ledger-submissions.csv").unlink()
    assert invoke("runs", runs, "--quiet").exit_code == 0
    assert (runs / "ledger.csv").read_text() == before


def test_an_upload_is_recorded_on_the_run_that_wrote_the_file(tmp_path, monkeypatch):
    from comp.submission import record_upload

    root = tmp_path / "runs"
    for name in ("r1", "r2"):
        (root / name).mkdir(parents=True)
        (root / name / "config.yaml").write_text("task: classification\n")
        (tmp_path / f"{name}.csv").write_text(f"id,label\n{name},1\n")
        record_submission(root / name, tmp_path / f"{name}.csv", models=["m"])
    assert record_upload(tmp_path / "r2.csv", "c", "hello", runs_dir=root) == root / "r2"
    assert read_submissions(root / "r2")[0]["uploads"][0]["message"] == "hello"
    assert read_submissions(root / "r1")[0]["uploads"] == []
    (tmp_path / "other.csv").write_text("id,label\nx,1\n")
    assert record_upload(tmp_path / "other.csv", "c", "m", runs_dir=root) is None  # no run wrote it: a warning
    assert record_upload(tmp_path / "other.csv", "c", "m", run_dir=root / "r1") == root / "r1"
    assert read_submissions(root / "r1")[-1]["kind"] == "external"


def test_sync_matches_by_file_and_time_then_description_and_adopts_outside_uploads(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: classification\n")
    early, late = _now(-3600), _now()
    records = [
        {"file": "x.csv", "sha256": "1", "time": _now(-7200), "models": [], "uploads": [
            {"competition": "c", "message": "first", "time": early},
            {"competition": "c", "message": "second", "time": late}]},
        {"file": "y.csv", "sha256": "2", "time": _now(-7200), "models": [], "uploads": [
            {"competition": "c", "message": "renamed upload", "time": early}]},
        {"file": "z.csv", "sha256": "3", "time": _now(-7200), "models": [], "uploads": []},
    ]  # fmt: skip
    update_submissions(run, lambda rs: rs.extend(records))
    remote = [
        {"ref": "10", "fileName": "x.csv", "date": late, "description": "?", "publicScore": "0.5"},
        {"ref": "11", "fileName": "x.csv", "date": early, "description": "?", "publicScore": "0.4"},
        {"ref": "12", "fileName": "other.csv", "date": _now(-100), "description": "renamed upload", "publicScore": "0.3"},
        {"ref": "13", "fileName": "z.csv", "date": _now(-60), "description": "from the website", "publicScore": "0.2"},
    ]  # fmt: skip
    api = types.SimpleNamespace(competition_submissions=lambda competition: remote)  # old kaggle: no page_size
    assert len(fetch(api, "c")) == 4
    assert sync_scores(tmp_path / "runs", api=api) == 4
    got = read_submissions(run)
    assert [u["public"] for u in got[0]["uploads"]] == [0.4, 0.5]
    assert got[1]["uploads"][0]["public"] == 0.3  # by description
    assert got[2]["uploads"][0]["message"] == "from the website" and got[2]["uploads"][0]["public"] == 0.2


def test_sync_without_kaggle_or_uploads_is_one_line(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task: classification\n")
    result = invoke("runs", tmp_path / "runs", "--sync")
    assert result.exit_code == 2 and "--competition" in result.output
    monkeypatch.setitem(sys.modules, "kaggle", None)
    result = invoke("runs", tmp_path / "runs", "--sync", "--competition", "c")
    assert result.exit_code == 2 and "pip install kaggle" in result.output
    assert invoke("runs", tmp_path / "nowhere").exit_code == 2
    plot = invoke("runs", tmp_path / "runs", "--plot")
    assert plot.exit_code == 2 and "at least 2" in plot.output


def _append(run: str, i: int) -> None:
    path = Path(run).parent / f"s{i}.csv"
    for k in range(10):
        path.write_text(f"id,label\n{i},{k}\n")
        record_submission(run, path, models=[f"m{i}"])


def test_records_survive_several_writers(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(str(run), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    records = json.loads((run / "submissions.json").read_text())["submissions"]
    assert len(records) == 40 and len({r["sha256"] for r in records}) == 40


def test_collect_marks_unfinished_runs(runs):
    for p in (runs / "b" / "models" / "eff").glob("fold1.*"):
        p.unlink()
    (runs / "b" / "models" / "eff" / "metrics.json").unlink()
    table, _ = collect(runs)
    row = table.set_index("run").loc["b"]
    assert row["folds"] == "1/2" and pd.isna(row["cv"])
