"""What a bundle reads from the test table: a metadata tower's raw rows (a second graph input) and a GBDT stack's
boosters, metadata and groups (``manifest.json`` ``stack``). Both are run by ``bundle_predict.py``'s own code,
so the checks here call that code: the bundle is checked with what will run in the notebook.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from comp.config import DataConfig
from comp.errors import CompError, RunFolderError
from comp.inference import bundle_predict as bp
from comp.inference._export import META, Parity
from comp.run import RunDir
from comp.training._tower import test_metadata


def tower_rows(data: DataConfig, tower: dict[str, Any], ids: list[str] | None, n: int, where: str) -> np.ndarray:
    """The raw metadata rows (as ``comp predict`` builds them) of the first ``n`` test images a tower graph is
    checked on."""
    if ids is None:
        raise CompError(
            f"{where}: a metadata tower's bundle is checked on test images and their rows of data.test_csv, "
            "which are not usable here; set data.test_csv and data.test_image_dir to the competition's test set"
        )
    return test_metadata(data, tower)[:n]


def tower_entry(tower: dict[str, Any]) -> dict[str, Any]:
    """A graph's ``metadata`` block: its second input and the columns (with training levels) it reads."""
    cats = list(tower["categorical"])
    return {
        "input": META,
        "numeric": list(tower["numeric"]),
        "categorical": cats,
        "levels": {c: list(tower["levels"][c]) for c in cats},
    }


def stack_block(run: RunDir, name: str, stack: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str]]:
    """Copy a GBDT blend's boosters into the bundle ``folder``; returns the manifest's ``stack`` block and the
    files written."""
    boosters: list[dict[str, Any]] = []
    files: list[str] = []
    for i, b in enumerate(stack["boosters"]):
        if "file" not in b:
            boosters.append({"constant": [float(v) for v in b["constant"]]})
            continue
        file = f"stack-booster{i}.txt"
        shutil.copyfile(run.model_dir(name) / b["file"], folder / file)
        boosters.append({"file": file, "rounds": b.get("rounds")})
        files.append(file)
    block = {
        "method": "gbdt",
        "members": stack["members"],
        "features": stack.get("features"),
        "group_column": stack.get("group_column"),
        "boosters": boosters,
    }
    return block, files


def check_stack(
    folder: Path, blend: RunDir, name: str, members: list[tuple[RunDir, str]], data: DataConfig, classes: list[str]
) -> float:
    """Run the bundle's stack (predict.py's code) on the members' whole ``test.csv`` and the test table, and fail
    unless it reproduces the blend's ``test.csv``: group features need every test row of a group, so the check
    covers all rows, not the parity images. Returns the largest difference."""
    if not blend.test_pred(name).is_file():
        raise RunFolderError(
            f"blend {name} has no test.csv to check the bundle's stack against; predict its members "
            "(comp predict) and re-run comp ensemble --method gbdt"
        )
    want = blend.read_test(name, id_column=data.id_column)
    ids = [str(i) for i in want.ids]
    P = []
    for run, mid in members:
        pred = run.read_test(mid, id_column=data.id_column).reorder(ids)
        P.append(pred.probs[:, [list(map(str, pred.classes)).index(c) for c in classes]])
    m = bp.load_manifest(folder)
    assert m.stack is not None
    table = None
    if m.table_columns:
        if not data.test_csv:
            raise CompError("the GBDT stack reads the test table; set data.test_csv in the blend's config")
        test_csv = Path(data.test_csv)
        sample = bp.Sample(test_csv, [m.id_column], [[i] for i in ids], list(range(2, len(ids) + 2)))
        try:
            table = bp.read_table(test_csv, sample, m)
        except bp.BundleError as exc:
            raise CompError(str(exc)) from None
    got = bp.run_stack(folder, m.stack, np.stack(P), table)
    expect = want.probs[:, [list(map(str, want.classes)).index(c) for c in classes]]
    diff = Parity.of(got, expect, relative=True).checked
    if not diff <= 1e-6:
        raise CompError(
            f"the bundle's GBDT stack differs from {blend.test_pred(name)} by {diff:.1e}; the members' test.csv or "
            "the test table changed since comp ensemble: re-run it, then bundle"
        )
    return diff
