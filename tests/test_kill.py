"""Commands killed while committing their outputs: a reader afterwards sees the whole new set, never a mix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pandas as pd

import comp
from comp.run import FileSet, RunDir, recover

# the child runs a comp call whose FileSet commit is killed (SIGKILL) right after its first rename
KILLER = textwrap.dedent(
    """
    import os, signal, sys, json
    from comp.run import _io
    real = _io._apply

    def apply_one_then_die(moves):
        real(moves[:1])
        os.kill(os.getpid(), signal.SIGKILL)

    _io._apply = apply_one_then_die
    import comp
    kind, args = sys.argv[1], json.loads(sys.argv[2])
    if kind == "predict":
        comp.predict(args["run"], tta=args["tta"], oof=True, out=args["out"], engine="torch", progress=False)
    else:
        comp.blend(args["members"], method=args["method"], name="b")
    """
)


def _kill_during_commit(kind: str, **args) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, kind, json.dumps(args)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]


def test_fileset_commits_all_or_recovers_all(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    with FileSet(tmp_path) as files:
        files.text(a, "old a")
        files.text(b, "old b")
    files = FileSet(tmp_path)
    files.text(a, "new a")
    files.text(b, "new b")
    assert a.read_text() == "old a"  # nothing visible before the commit
    from comp.run import _io

    moves = [[str(t.resolve()), str(p.resolve())] for t, p in files._staged]
    _io.write_json(tmp_path / ".commit-1-1.json", moves)
    _io._apply(moves[:1])  # a kill after the first rename
    assert (a.read_text(), b.read_text()) == ("new a", "old b")
    assert recover(tmp_path) == 1
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.glob(".commit-*"))


def test_failed_set_leaves_the_old_files(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("old")
    try:
        with FileSet(tmp_path) as files:
            files.text(a, "new")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert a.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_predict_killed_while_committing(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    comp.predict(run, oof=True, out=tmp_path / "old.csv", engine="torch", progress=False)
    _kill_during_commit("predict", run=str(run), tta=["hflip"], out=str(tmp_path / "new.csv"))
    # a fresh reader finishes the half-committed set first
    got = RunDir(run).read_test("eff").frame()
    got_tta = RunDir(run).read_oof("eff", tta=True).frame()
    expect_dir = tmp_path / "expect"
    shutil.copytree(trained_run, expect_dir)
    comp.predict(expect_dir, tta=["hflip"], oof=True, out=tmp_path / "expect.csv", engine="torch", progress=False)
    pd.testing.assert_frame_equal(got, RunDir(expect_dir).read_test("eff").frame())
    pd.testing.assert_frame_equal(got_tta, RunDir(expect_dir).read_oof("eff", tta=True).frame())
    assert (tmp_path / "new.csv").read_text() == (tmp_path / "expect.csv").read_text()
    assert not list(run.rglob(".commit-*"))


def test_ensemble_killed_while_committing_never_pairs_new_tables_with_old_metrics(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    second = tmp_path / "run2"
    shutil.copytree(trained_run, second)
    members = [str(run / "models/eff"), str(second / "models/eff")]
    comp.blend(members, method="mean", name="b")
    _kill_during_commit("blend", members=members, method="hill_climb")
    blend = RunDir(tmp_path / "b")
    metrics = blend.read_metrics("b")
    assert metrics.extra["method"] == "hill_climb"
    oof = blend.read_oof("b")
    assert len(oof.ids) == len(RunDir(run).read_oof("eff").ids)
    member = comp.blend([str(tmp_path / "b/models/b")], method="mean", name="again")
    assert member.cv is not None
