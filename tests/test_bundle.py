"""comp bundle: a run or blend -> fused graphs + manifest + predict.py, run in a torch-free venv on read-only folders."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from comp.cli import main
from comp.config import DataConfig
from comp.data._augment import build_pipeline, eval_pipeline, to_dict
from comp.ensembling import run_ensemble
from comp.errors import CompError
from comp.inference import _bundle as B
from comp.inference import _bundle_checks as C
from comp.inference import bundle_predict as bp
from comp.inference import bundle_run, predict_run
from comp.run import CheckpointMeta, RunDir, load_checkpoint, make_checkpoint
from tests.conftest import chmod_tree, clean_env, snapshot

# ---------------------------------------------------------------- fixtures


def _add_model(run: RunDir, src_id: str, new_id: str, name: str, size: int, classes: list[str]) -> None:
    """Fold checkpoints of a randomly initialised timm model with its own image size and class order."""
    import timm

    for path in run.checkpoints(src_id):
        old = load_checkpoint(path).meta
        torch.manual_seed(10 + old.fold)
        model = timm.create_model(name, num_classes=len(classes)).eval()
        mean, std = [0.5, 0.45, 0.4], [0.25, 0.2, 0.3]
        meta = dataclasses.replace(
            old,
            model_name=name,
            model_id=new_id,
            classes=classes,
            image_size=(size, size),
            mean=mean,
            std=std,
            eval_transform=to_dict(eval_pipeline((size, size), mean, std)),
        )
        run.model_dir(new_id).mkdir(parents=True, exist_ok=True)
        torch.save(make_checkpoint(model.state_dict(), meta), run.checkpoint(new_id, old.fold))


@pytest.fixture(scope="module")
def world(trained_run, tmp_path_factory) -> dict:
    """A private copy of the trained run plus a second model (other size, normalisation and class order), both
    predicted by comp, and a mean blend of the two."""
    root = tmp_path_factory.mktemp("bundle")
    run_dir = root / "runs" / "run"
    shutil.copytree(trained_run, run_dir)
    run = RunDir(run_dir)
    _add_model(run, "eff", "res", "test_resnet", 40, ["c2", "c0", "c1"])
    # the OOF a blend needs, from its checkpoints; res by torch, eff by onnxruntime: the bundle must match both
    predict_run(run_dir, models=["res"], engine="torch", oof=True, progress=False)
    run.write_oof("res", run.read_oof("res", tta=True))
    predict_run(run_dir, models=["eff"], out=root / "eff.csv", progress=False)
    blend = run_ensemble(
        [run.model_dir("eff"), run.model_dir("res")], method="mean", name="blend", out=root / "blend.csv"
    )
    return {"root": root, "run": run_dir, "blend": blend.run_dir, "data": run.load_config().data}


def _predict_in_venv(python: Path, bundle: Path, images: Path, sample: Path, out_dir: Path) -> tuple[Path, Path, str]:
    """Run the bundle's predict.py in the venv with the image and bundle folders read-only; nothing may appear there."""
    sub, probs = out_dir / "submission.csv", out_dir / "probs.csv"
    before = (snapshot(bundle), snapshot(images))
    chmod_tree(bundle, writable=False)
    chmod_tree(images, writable=False)
    try:
        res = subprocess.run(
            [
                str(python),
                str(bundle / "predict.py"),
                "--images",
                str(images),
                "--sample",
                str(sample),
                "--out",
                str(sub),
                "--probs",
                str(probs),
                "--threads",
                "1",
                "--batch-size",
                "3",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=out_dir,
            env=clean_env(),
        )
    finally:
        chmod_tree(bundle, writable=True)
        chmod_tree(images, writable=True)
    assert res.returncode == 0, res.stderr
    assert (snapshot(bundle), snapshot(images)) == before, "predict.py wrote into the bundle or image folder"
    return sub, probs, res.stderr


def _probs(path: Path, classes: list[str]) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"id": str})
    return df.set_index("id")[classes]


# ---------------------------------------------------------------- end to end in a torch-free venv


def test_venv_holds_only_the_three_packages(ort_python):
    code = (
        "import importlib.util as u, sys; "
        "sys.exit(any(u.find_spec(m) for m in ('torch', 'comp', 'cv2', 'albumentations', 'timm')))"
    )
    res = subprocess.run([str(ort_python), "-c", code], env=clean_env(), cwd="/", timeout=60)
    assert res.returncode == 0, "the bundle venv can import torch, comp, cv2, albumentations or timm"


def test_run_bundle_reproduces_comp_predict(world, ort_python, tmp_path):
    out = tmp_path / "bundle"
    result = bundle_run(world["run"], out=out, models=["eff"])
    assert sorted(p.name for p in out.iterdir()) == ["eff.onnx", "manifest.json", "predict.py"]
    assert (out / "predict.py").read_bytes() == Path(bp.__file__).read_bytes()
    m = result.manifest
    assert m["format"] == "comp.bundle/2" and m["classes"] == ["c0", "c1", "c2"] and m["task"] == "classification"
    assert m["submission"] == {
        "kind": "names",
        "columns": ["id", "label"],
        "target_column": "label",
        "decision": None,
    }
    assert m["id_column"] == "id" and m["image_ext"] == ".png" and m["graphs"][0]["folds"] == [0, 1]
    assert m["resize_fingerprint"] == bp.resize_fingerprint(C.cv2_resize)
    assert m["graphs"][0]["max_abs_diff"] <= 1e-4 and m["graphs"][0]["checked_on"] == "8 test images"

    data = world["data"]
    sub, probs, log = _predict_in_venv(
        ort_python, out, Path(data.test_image_dir), Path(data.sample_submission), tmp_path
    )
    assert "resize: numpy (cv2 not importable)" in log
    want = _probs(RunDir(world["run"]).test_pred("eff"), m["classes"])
    got = _probs(probs, m["classes"]).loc[want.index]
    assert np.abs(got.to_numpy() - want.to_numpy()).max() <= 1e-4
    assert sub.read_bytes() == (world["root"] / "eff.csv").read_bytes(), "the submission differs from comp predict's"


def test_blend_bundle_reproduces_the_blend(world, ort_python, tmp_path):
    out = tmp_path / "bundle"
    result = bundle_run(world["blend"], out=out)
    graphs = result.manifest["graphs"]
    assert [(g["file"], g["weight"], g["image_size"]) for g in graphs] == [
        ("eff.onnx", 0.5, [32, 32]),
        ("res.onnx", 0.5, [40, 40]),
    ]
    assert graphs[1]["mean"] == [0.5, 0.45, 0.4] and result.manifest["source"]["method"] == "mean"
    data = world["data"]
    sub, probs, _ = _predict_in_venv(ort_python, out, Path(data.test_image_dir), Path(data.sample_submission), tmp_path)
    blend = RunDir(world["blend"])
    classes = result.manifest["classes"]
    want = _probs(blend.test_pred("blend"), classes)
    got = _probs(probs, classes).loc[want.index]
    assert np.abs(got.to_numpy() - want.to_numpy()).max() <= 1e-4
    assert sub.read_bytes() == (world["root"] / "blend.csv").read_bytes(), "the submission differs from the blend's"
    # res's graph reorders its columns (c2, c0, c1) to the bundle's class order inside the graph
    assert bundle_run(world["run"] / "models" / "res", out=tmp_path / "res").manifest["classes"] == [
        "c2",
        "c0",
        "c1",
    ]


# ---------------------------------------------------------------- what is refused, before anything is written


@pytest.mark.parametrize("method,bias", [("rank", False), ("geometric", False), ("stacking", False), ("mean", True)])
def test_blends_that_are_not_weighted_means_are_refused(world, tmp_path, method, bias):
    run = RunDir(world["run"])
    blend = run_ensemble(
        [run.model_dir("eff"), run.model_dir("res")],
        method=method,
        bias=bias,
        name=f"b-{method}",
        submit=False,
    )
    with pytest.raises(CompError, match="--bias" if bias else f"method '{method}'") as err:
        bundle_run(blend.model_dir, out=tmp_path / "bundle")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.iterdir())


def test_test_csv_of_other_tta_is_refused(world, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(world["run"], run_dir)
    predict_run(run_dir, models=["eff"], tta=["hflip"], out=tmp_path / "sub.csv", progress=False)
    with pytest.raises(CompError, match=r"test\.csv .*--tta it used \(this bundle: none\)"):
        bundle_run(run_dir, out=tmp_path / "bundle", models=["eff"])
    assert not (tmp_path / "bundle").exists()
    m = bundle_run(run_dir, out=tmp_path / "bundle", models=["eff"], tta=["hflip"]).manifest
    assert m["graphs"][0]["tta"] == ["hflip"] and m["graphs"][0]["max_abs_diff"] <= 1e-4


def test_out_folder_rules(world, tmp_path):
    src = world["run"] / "models" / "eff"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CompError, match="is a file"):
        bundle_run(src, out=tmp_path / "file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(CompError, match="not a comp bundle"):
        bundle_run(src, out=tmp_path / "notes")
    (tmp_path / "empty").mkdir()
    bundle_run(src, out=tmp_path / "empty")  # an empty folder is fine
    out = tmp_path / "empty"
    (out / "dataset-metadata.json").write_text('{"title": "my bundle"}')  # kaggle datasets init
    (out / "mine.onnx").write_bytes(b"a user's own graph")
    with pytest.raises(CompError, match="also holds mine.onnx, which comp did not write"):
        bundle_run(src, out=out)  # only what the manifest says comp wrote may be deleted
    assert (out / "mine.onnx").read_bytes() == b"a user's own graph"
    (out / "mine.onnx").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == ["manifest.json", "predict.py", "eff.onnx"]
    manifest["files"].append("old.onnx")  # an earlier bundle that wrote a second graph
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "old.onnx").write_bytes(b"from an earlier bundle")
    bundle_run(src, out=out)  # an earlier bundle is replaced; the dataset's Kaggle metadata is kept
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset-metadata.json",
        "eff.onnx",
        "manifest.json",
        "predict.py",
    ]
    assert json.loads((out / "dataset-metadata.json").read_text()) == {"title": "my bundle"}
    (out / "todo.txt").write_text("mine")
    with pytest.raises(CompError, match="also holds todo.txt"):
        bundle_run(src, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "notes"], "a temporary folder was left"


def test_interrupted_bundle_leaves_the_earlier_one(world, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    bundle_run(world["run"] / "models" / "eff", out=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls: list[int] = []
    build = B._build_graph

    def interrupted_at(n: int):
        def build_or_die(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return build(*args, **kwargs)

        return build_or_die

    monkeypatch.setattr(B, "_build_graph", interrupted_at(2))  # the blend's first graph is already written
    with pytest.raises(KeyboardInterrupt):
        bundle_run(world["blend"], out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    calls.clear()
    monkeypatch.setattr(B, "_build_graph", interrupted_at(1))
    with pytest.raises(KeyboardInterrupt):
        bundle_run(world["blend"], out=tmp_path / "fresh")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_eval_transforms_predict_py_cannot_reproduce():
    mean, std = [0.5, 0.5, 0.5], [0.2, 0.2, 0.2]
    ok = CheckpointMeta(
        "test_resnet", "m", ["a", "b"], (24, 32), mean, std, to_dict(eval_pipeline((24, 32), mean, std)), {}
    )
    C.check_preprocessing(ok, Path("fold0.pt"))
    crop = build_pipeline(
        [{"name": "Resize", "height": 40, "width": 40}, {"name": "CenterCrop"}], (24, 32), mean, std, "v"
    )
    area = build_pipeline([{"name": "Resize", "interpolation": 3}], (24, 32), mean, std, "v")
    for meta, needle in [
        (dataclasses.replace(ok, eval_transform=to_dict(crop)), "Resize -> CenterCrop -> Normalize"),
        (dataclasses.replace(ok, eval_transform=to_dict(area)), "eval Resize"),
        (dataclasses.replace(ok, mean=[0.4, 0.5, 0.5]), "eval Normalize"),
        (dataclasses.replace(ok, in_chans=1), "1 channels"),
    ]:
        with pytest.raises(CompError, match=needle):
            C.check_preprocessing(meta, Path("fold0.pt"))


def test_submission_spec_follows_the_sample(tmp_path):
    classes = ["cat", "dog"]
    sample = tmp_path / "s.csv"

    def spec(header: str, **data):
        sample.write_text(f"{header}\nx1,{','.join('0' * header.count(','))}\n")
        return C.submission_spec(DataConfig(sample_submission=str(sample), **data), classes)

    # integer cells for non-integer class names: class codes, as make_submission writes them
    assert spec("id,label")["submission"] == {
        "kind": "codes",
        "columns": ["id", "label"],
        "target_column": "label",
        "codes": None,
        "decision": None,
    }
    sample.write_text("id,label\nx1,dog\n")
    assert C.submission_spec(DataConfig(sample_submission=str(sample)), classes)["submission"]["kind"] == "names"
    assert spec("id,dog,cat") == {
        "id_column": "id",
        "image_ext": ".png",
        "submission": {"kind": "proba", "columns": ["id", "dog", "cat"], "decision": None},
    }
    assert spec("image,dog,cat")["id_column"] == "image"  # the sample's first column, as make_submission does
    assert spec("id,label", path_template="jpg/{id}.jpg")["path_template"] == "jpg/{id}.jpg"
    with pytest.raises(CompError, match="neither one label column"):
        spec("id,a,b")
    with pytest.raises(CompError, match="uses column 'person'"):
        spec("id,label", path_template="{person}/{id}.jpg")


RENDER_CASES = [  # (task, classes, sample header, sample filler, decision)
    ("classification", ["cat", "dog", "fox"], ["id", "label"], "cat", None),
    ("classification", ["cat", "dog", "fox"], ["id", "label"], "0", None),  # integer codes
    ("classification", ["cat", "dog", "fox"], ["id", "fox", "cat", "dog"], "0.3", None),
    ("multilabel", ["r", "g", "b"], ["id", "tags"], "r", None),  # tags at 0.5
    ("multilabel", ["r", "g", "b"], ["id", "tags"], "r", {"thresholds": [0.3, 0.62, 0.5]}),
    ("multilabel", ["r", "g", "b"], ["id", "b", "r", "g"], "0.5", {"thresholds": [0.3, 0.62, 0.5]}),
    ("regression", ["red", "green"], ["id", "green", "red"], "0", None),
    ("regression", ["score"], ["id", "target"], "0", None),  # one target, the sample's own name
    ("regression", ["grade"], ["id", "grade"], "0", {"cutpoints": [0.4, 1.7, 2.2], "grades": [0.0, 1.0, 2.0, 3.0]}),
    ("regression", ["grade"], ["id", "grade"], "0", {"cutpoints": [0.5, 1.5], "grades": [0.0, 0.5, 1.0]}),
]


@pytest.mark.parametrize("task, classes, header, filler, decision", RENDER_CASES)
def test_predict_py_renders_the_submission_as_make_submission(tmp_path, task, classes, header, filler, decision):
    """The manifest comp writes, read back by predict.py, renders every task's submission byte for byte as
    comp's make_submission writes it (ids with leading zeros and NA-like names, empty tag sets, grades)."""
    from comp.submission import make_submission

    ids = ["007", "NA", "a b", "x", "y", "z", "w"]
    sample = tmp_path / "sample.csv"
    pd.DataFrame({c: ids if c == "id" else [filler] * len(ids) for c in header}).to_csv(sample, index=False)
    rng = np.random.default_rng(len(header) + len(classes))
    probs = (
        rng.dirichlet(np.ones(len(classes)), len(ids)) if task == "classification" else rng.random((7, len(classes)))
    )
    if task == "regression":
        probs = probs * 3 - 0.2
    spec = C.submission_spec(DataConfig(sample_submission=str(sample)), classes, task, decision)
    (tmp_path / "g.onnx").write_bytes(b"")
    graph = {"file": "g.onnx", "weight": 1.0, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.2] * 3}
    manifest = {
        "format": bp.FORMAT,
        "task": task,
        "classes": classes,
        "graphs": [{**graph, "input": "input", "output": "probs"}],
        **spec,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    m = bp.load_manifest(tmp_path)
    rows = bp.submission_rows(bp.read_sample(sample), m, probs)
    bp.write_csv(tmp_path / "script.csv", header, rows)
    want = make_submission(ids, probs, classes, sample, task=task, decision=decision)
    want.to_csv(tmp_path / "comp.csv", index=False)
    assert (tmp_path / "script.csv").read_text() == (tmp_path / "comp.csv").read_text()


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"task": "banana"}, "task must be"),
        ({"submission": {"kind": "tags", "columns": ["id", "label"], "target_column": "label"}}, "submission.kind"),
        (
            {
                "submission": {
                    "kind": "names",
                    "columns": ["id", "label"],
                    "target_column": "label",
                    "decision": {"thresholds": [1]},
                }
            },
            None,
        ),
    ],
)
def test_manifest_2_checks_the_task_and_its_submission_kind(tmp_path, change, needle):
    (tmp_path / "g.onnx").write_bytes(b"")
    graph = {"file": "g.onnx", "weight": 1.0, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.2] * 3}
    manifest = {
        "format": "comp.bundle/2",
        "task": "classification",
        "classes": ["a", "b"],
        "graphs": [{**graph, "input": "input", "output": "probs"}],
        "id_column": "id",
        "image_ext": ".png",
        "submission": {"kind": "names", "columns": ["id", "label"], "target_column": "label", "decision": None},
        **change,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    if needle is None:  # a decision the kind does not render is ignored
        assert bp.load_manifest(tmp_path).thresholds is None
        return
    with pytest.raises(bp.BundleError, match=needle):
        bp.load_manifest(tmp_path)


def test_manifest_thresholds_and_cutpoints_are_checked(tmp_path):
    (tmp_path / "g.onnx").write_bytes(b"")
    graph = {"file": "g.onnx", "weight": 1.0, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.2] * 3}
    base = {
        "format": "comp.bundle/2",
        "graphs": [{**graph, "input": "input", "output": "probs"}],
        "id_column": "id",
        "image_ext": "",
    }
    tags = {"kind": "tags", "columns": ["id", "t"], "target_column": "t", "decision": {"thresholds": [0.5]}}
    grades = {
        "kind": "values",
        "columns": ["id", "g"],
        "target_column": "g",
        "decision": {"cutpoints": [2.0, 1.0], "grades": [0, 1, 2]},
    }
    for task, classes, block, needle in [
        ("multilabel", ["a", "b"], tags, "2 numbers, one per label"),
        ("regression", ["g"], grades, "increasing order"),
        ("regression", ["g"], {**grades, "decision": {"cutpoints": [1.0], "grades": [0]}}, "one more than cutpoints"),
    ]:
        manifest = {**base, "task": task, "classes": classes, "submission": block}
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(bp.BundleError, match=needle):
            bp.load_manifest(tmp_path)


def test_cli_bundle(world, tmp_path):
    src = world["run"] / "models" / "res"
    res = CliRunner().invoke(main, ["bundle", str(src), "--out", str(tmp_path / "b"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "res.onnx" in res.output and "predict.py --images" in res.output
    res = CliRunner().invoke(main, ["bundle", str(tmp_path), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not a run folder" in res.output


@pytest.mark.parametrize("where", ["missing-folder", "is-a-folder", "probs-missing-folder"])
def test_unwritable_outputs_are_refused_before_any_graph_runs(world, tmp_path, monkeypatch, capsys, where):
    out = tmp_path / "b"
    bundle_run(world["run"], out=out, models=["res"])
    data = world["data"]
    sub, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
    if where == "missing-folder":
        sub = tmp_path / "nope" / "sub.csv"
    elif where == "is-a-folder":
        sub = tmp_path
    else:
        probs = tmp_path / "nope" / "probs.csv"

    def must_not_run(*a, **k):
        raise AssertionError("graphs opened before the outputs were checked")

    monkeypatch.setattr(bp, "open_runners", must_not_run)
    argv = ["--bundle", str(out), "--images", str(data.test_image_dir), "--sample", str(data.sample_submission)]
    rc = bp.main([*argv, "--out", str(sub), "--probs", str(probs)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot write") and err.count("\n") == 1, err
    assert not (tmp_path / "sub.csv").exists() and not (tmp_path / "probs.csv").exists()
