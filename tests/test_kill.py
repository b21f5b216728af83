"""Commands killed while committing their outputs: a reader afterwards sees the whole new set, never a mix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import comp
from comp.run import FileSet, RunDir, _io, recover

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


# ---------------------------------------------------------------- journals are read, never obeyed


def _journal(root, moves, pid=None, host=None, name="1-1") -> None:
    """A journal as FileSet writes it, of a writer that is gone unless ``pid`` says otherwise."""
    import socket

    record = {"format": "comp.commit/2", "host": host or socket.gethostname(), "pid": pid or _dead_pid()}
    record.update(journal=str(root / f".commit-{name}.json"), moves=[[str(a), str(b)] for a, b in moves])
    (root / f".commit-{name}.json").write_text(json.dumps(record))


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _staged(folder, target: str, content: str, pid: int | None = None):
    """A temporary named exactly as comp names them (for ``target``, by a writer with ``pid``)."""
    tmp = folder / f".{target}.{_io._host_tag()}-{pid or _dead_pid()}.abcd1234.tmp"
    tmp.write_text(content)
    return tmp


def _crafted_run(tmp_path):
    run = tmp_path / "run"
    (run / "models" / "m").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    return run, victim


def test_a_crafted_journal_never_replaces_a_file_outside_the_run_folder(tmp_path, caplog):
    run, victim = _crafted_run(tmp_path)
    evil = _staged(run, "victim.txt", "owned")  # a comp-named temporary inside the run folder ...
    _journal(run, [(evil, victim)])  # ... moved onto a file outside it
    assert recover(run) == 0 and victim.read_text() == "precious"
    assert "ignored the commit journal" in caplog.text and "different folders" in caplog.text
    beside = _staged(victim.parent, "victim.txt", "owned")  # a temporary beside the victim, no witness there
    _journal(run, [(beside, victim)], name="1-2")
    RunDir(run).require()
    assert victim.read_text() == "precious" and "holds no witness" in caplog.text
    (run / "link").symlink_to(victim.parent)  # through a link inside the run folder to the outside
    _journal(run, [(run / "link" / beside.name, run / "link" / "victim.txt")], name="1-3")
    RunDir(run).require()
    assert victim.read_text() == "precious"
    _journal(run, [(run / "notes.txt", run / "config.yaml")], name="1-4")  # not a comp temporary
    (run / "notes.txt").write_text("user's")
    RunDir(run).require()
    assert (run / "config.yaml").read_text() == "seed: 1\n" and (run / "notes.txt").read_text() == "user's"
    link = run / f".config.yaml.{_io._host_tag()}-1.abcd1234.tmp"
    link.symlink_to(victim)  # a temporary that is a link: moving it would make config.yaml read the victim
    _journal(run, [(link, run / "config.yaml")], name="1-5")
    RunDir(run).require()
    assert (run / "config.yaml").read_text() == "seed: 1\n"
    (run / ".commit-1-6.json").write_text(json.dumps([[str(evil), str(victim)]]))  # the older list format
    RunDir(run).require()
    assert victim.read_text() == "precious"


def test_predict_with_a_crafted_journal_in_the_run_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    victim = tmp_path / "victim.csv"
    victim.write_text("precious")
    evil = _staged(run, "victim.csv", "owned")
    _journal(run, [(evil, victim)])
    comp.predict(run, engine="torch", out=tmp_path / "sub.csv", progress=False)
    assert victim.read_text() == "precious" and (tmp_path / "sub.csv").is_file()


def test_a_live_writers_journal_and_temporaries_are_left_to_it(tmp_path):
    import os

    run, _ = _crafted_run(tmp_path)
    target = run / "models" / "m" / "test.csv"
    target.write_text("old")
    live = _staged(target.parent, "test.csv", "new", pid=os.getpid())
    _journal(run, [(live, target)], pid=os.getpid())  # this process is alive: its journal is its own to finish
    RunDir(run).require()
    assert target.read_text() == "old" and live.exists() and (run / ".commit-1-1.json").exists()
    other = _staged(target.parent, "test.csv", "other host", pid=99)
    other.rename(other.with_name(".test.csv.00000000-99.abcd1234.tmp"))  # another box's: young, so kept
    old = target.parent / ".test.csv.zyxw9876.tmp"  # a temporary of the earlier naming, an hour old
    old.write_text("x")
    os.utime(old, (0, 0))
    dead = _staged(target.parent, "oof.csv", "x")
    RunDir(run).require()
    left = sorted(p.name for p in target.parent.glob(".*.tmp"))
    assert live.name in left and ".test.csv.00000000-99.abcd1234.tmp" in left
    assert old.name not in left and dead.name not in left


def test_the_sweep_touches_only_comp_temporaries_at_comp_places(tmp_path):
    import os

    run, _ = _crafted_run(tmp_path)
    draft = run / "mydocs" / ".draft.tmp"
    draft.parent.mkdir()
    draft.write_text("a user's draft")
    os.utime(draft, (0, 0))
    deep = _staged(run / "mydocs", "x.csv", "a dead writer's, but not where comp writes")
    mine = run / ".notes.tmp"
    mine.write_text("not comp's pattern")
    os.utime(mine, (0, 0))
    RunDir(run).require()
    assert draft.exists() and deep.exists() and mine.exists()


def test_a_commit_whose_staged_file_vanished_fails_and_changes_nothing(tmp_path):
    from comp.errors import RunFolderError

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")
    files = FileSet(tmp_path)
    files.text(a, "new a")
    files.text(b, "new b")
    files._staged[1][0].unlink()  # someone else's sweep removed it
    with pytest.raises(RunFolderError, match="vanished"):
        files.commit()
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".commit-*"))


STRESS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from comp.run import FileSet, RunDir
    root, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for i in range(n):
        RunDir(root).require()  # recovers and sweeps, as every reader does, while the other process commits
        with FileSet(root) as files:
            files.text(root / f"{tag}.txt", str(i))
            files.text(root / "models" / "m" / f"{tag}.txt", str(i))
            files.text(root / "models" / "m" / "shared.txt", f"{tag} {i}")
        a = (root / f"{tag}.txt").read_text()
        b = (root / "models" / "m" / f"{tag}.txt").read_text()
        assert a == b == str(i), (tag, i, a, b)
    print("ok")
    """
)


def test_two_processes_committing_into_one_run_folder(tmp_path):
    import os

    run, _ = _crafted_run(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STRESS, str(run), tag, "100"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and out.strip() == "ok", err[-3000:]
    assert not list(run.rglob(".commit-*")) and not list(run.rglob(".*.tmp"))
    assert (run / "p1.txt").read_text() == (run / "p2.txt").read_text() == "99"
