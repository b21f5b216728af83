"""The bundle's standalone predict.py: OpenCV-exact resize, comp-exact preprocessing, end-to-end runs, errors.

The script is loaded from its file (it must not need comp); comp, cv2 and albumentations serve only as
references here.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.conftest import chmod_tree, snapshot

SCRIPT = Path(__file__).resolve().parents[1] / "comp" / "inference" / "bundle_predict.py"
CLASSES = ["cat", "dog", "fox"]
IDS = ["NA", "nan", "null", "007", "img 1", "a,b"]  # NA-like ids, leading zeros, a space, a comma
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _load_script():
    spec = importlib.util.spec_from_file_location("bundle_predict_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bp = _load_script()


def cv2_resize(img, h, w):
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def _images(shape, seed):
    """A uniform-noise image and a harsh one (only 0 and 255) of the same shape."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    harsh = (rng.integers(0, 2, shape, dtype=np.uint8) * 255).astype(np.uint8)
    return noise, harsh


# ---------------------------------------------------------------------------------------------------------
# resize: bit-exact with cv2.resize INTER_LINEAR on uint8

PAIRS = [
    ((1, 1), (1, 1)),  # identical: no-op
    ((1, 1), (5, 7)),  # one pixel up
    ((1, 7), (3, 2)),  # one row
    ((7, 1), (2, 9)),  # one column
    ((2, 2), (1, 1)),  # exact 2x shrink: OpenCV's 2x2 box path
    ((3, 3), (1, 1)),
    ((5, 4), (1, 2)),
    ((4, 6), (2, 3)),  # exact 2x shrink, non-square
    ((4, 6), (2, 6)),  # 2x along one axis only: the ordinary path
    ((9, 9), (4, 4)),  # just over 2x
    ((17, 33), (31, 65)),  # odd up
    ((31, 29), (7, 5)),  # odd down
    ((224, 224), (224, 224)),
    ((223, 225), (224, 224)),  # a pixel either side
    ((448, 448), (224, 224)),
    ((449, 447), (224, 224)),
    ((480, 640), (224, 224)),  # non-square to square
    ((1000, 750), (384, 384)),
    ((100, 50), (300, 301)),
    ((224, 224), (37, 512)),  # non-square target
    ((3, 640), (2, 5)),
    ((64, 64), (256, 256)),  # exact 4x up
    ((256, 256), (64, 64)),  # exact 4x down (not the 2x box path)
    ((120, 90), (240, 180)),  # exact 2x up
]


@pytest.mark.parametrize("src,dst", PAIRS, ids=[f"{s[0]}x{s[1]}-{d[0]}x{d[1]}" for s, d in PAIRS])
def test_resize_matches_cv2(src, dst):
    for img in _images((*src, 3), seed=src[0] * 1000 + dst[1]):
        want = cv2_resize(img, *dst)
        got = bp.resize_linear(img, *dst)
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.array_equal(got, want), f"{int((got != want).sum())} values differ"


def test_resize_matches_cv2_on_random_sizes():
    rng = np.random.default_rng(7)
    for _ in range(300):
        sh, sw, dh, dw = (int(v) for v in rng.integers(1, 160, 4))
        img = rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8)
        assert np.array_equal(bp.resize_linear(img, dh, dw), cv2_resize(img, dh, dw)), (sh, sw, dh, dw)


def test_fingerprint_and_resize_choice(monkeypatch):
    assert bp.resize_fingerprint(bp.resize_linear) == bp.resize_fingerprint(cv2_resize)
    fn, how, warning = bp.choose_resize(bp.resize_fingerprint(cv2_resize))
    assert how.startswith("cv2") and warning is None
    monkeypatch.setenv("COMP_BUNDLE_NO_CV2", "1")
    fn, how, warning = bp.choose_resize(None)
    assert fn is bp.resize_linear and "COMP_BUNDLE_NO_CV2" in how and warning is None
    fn, how, warning = bp.choose_resize("0" * 64)  # a bundle trained with some other rounding
    assert fn is bp.resize_linear and "resize_fingerprint" in warning


# ---------------------------------------------------------------------------------------------------------
# preprocessing: comp's RGB reading + albumentations Resize/Normalize


def _save_modes(folder: Path) -> dict[str, Path]:
    """One file per awkward mode: grayscale, palette (with and without transparency), RGBA, LA, 16-bit, JPEG."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (37, 29), dtype=np.uint8)
    files = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "palette.png": Image.fromarray(rgb).quantize(16),
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "la.png": Image.fromarray(np.dstack([rgb[..., 1], alpha]), "LA"),
        "gray16.png": Image.fromarray(rng.integers(0, 65536, (41, 23), dtype=np.uint16)),
        "gray16_low.png": Image.fromarray(rng.integers(0, 200, (41, 23), dtype=np.uint16)),
        "photo.jpg": Image.fromarray(rgb),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    pal = Image.fromarray(rgb).quantize(8)
    pal.info["transparency"] = 0
    files["palette_t.png"] = pal
    out = {}
    for name, im in files.items():
        im.save(folder / name)
        out[name] = folder / name
    return out


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory):
    return _save_modes(tmp_path_factory.mktemp("modes"))


@pytest.mark.parametrize("hw", [(24, 40), (37, 29), (18, 14), (64, 64)])
def test_preprocessing_matches_comp_and_albumentations(mode_files, hw):
    from comp.data._table import load_image  # comp's own reader is the reference for RGB conversion

    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    ref = A.Compose([A.Resize(*hw), A.Normalize(mean=mean, std=std)])
    lut = bp.normalize_lut(mean, std)
    for name, path in mode_files.items():
        rgb = bp.load_rgb(path)
        assert np.array_equal(rgb, load_image(path)), name
        want = ref(image=load_image(path))["image"].transpose(2, 0, 1)
        got = bp.normalize_batch(bp.resize_linear(rgb, *hw)[None], lut)[0]
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------------------
# end to end: a bundle of two tiny graphs, run as `python predict.py`


def _graph(path: Path, hw, weight_seed: int, batch: int | str = "N") -> tuple[np.ndarray, np.ndarray]:
    """softmax(mean-pooled channels @ W + b) as ONNX; returns (W, b) to recompute it."""
    rng = np.random.default_rng(weight_seed)
    w = rng.normal(0, 3, (3, len(CLASSES))).astype(np.float32)
    b = rng.normal(0, 1, len(CLASSES)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *hw])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, len(CLASSES)])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return w, b


GRAPHS = [  # (file, image_size, mean, std, weight, batch dim, seed)
    ("a.onnx", (20, 28), *IMAGENET, 2.0, "N", 1),
    ("b.onnx", (16, 16), [0.5] * 3, [0.25] * 3, 1.0, 4, 2),  # a fixed batch of 4: the script chunks and pads
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Graph files, images and the probabilities the bundle must produce, computed here from references."""
    from comp.data._table import load_image

    root = tmp_path_factory.mktemp("bundle_world")
    graphs = root / "graphs"
    graphs.mkdir()
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(11)
    shapes = [(30, 30), (19, 41), (64, 48), (16, 16), (20, 28), (7, 9)]
    for rid, shape in zip(IDS, shapes):
        img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        img[..., rng.integers(0, 3)] //= 4  # give every image a dominant colour so the classes differ
        Image.fromarray(img).save(images / f"{rid}.png")
    Image.fromarray(rng.integers(0, 65536, (33, 21), dtype=np.uint16)).save(images / "NA.png")  # 16-bit gray
    total = np.zeros((len(IDS), len(CLASSES)))
    for file, hw, mean, std, weight, batch, seed in GRAPHS:
        w, b = _graph(graphs / file, hw, seed, batch)
        ref = A.Compose([A.Resize(*hw), A.Normalize(mean=mean, std=std)])
        for i, rid in enumerate(IDS):
            x = ref(image=load_image(images / f"{rid}.png"))["image"].astype(np.float64)
            logits = x.mean(axis=(0, 1)) @ w + b
            total[i] += weight * np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    probs = total / sum(g[4] for g in GRAPHS)
    assert len(set(probs.argmax(1))) > 1, "the toy graphs should not predict one class for everything"
    return {"root": root, "graphs": graphs, "images": images, "probs": probs}


def make_bundle(world, name: str, kind: str = "label", codes=None, **manifest_overrides) -> Path:
    """A bundle folder: predict.py, the graphs and a manifest for one submission kind."""
    bundle = world["root"] / name
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(world["graphs"], bundle)
    shutil.copy(SCRIPT, bundle / "predict.py")
    columns = {"label": ["id", "label"], "code": ["id", "code"], "proba": ["id", "fox", "cat", "dog"]}[kind]
    submission = {"kind": kind, "columns": columns}
    if kind != "proba":
        submission["target_column"] = columns[1]
    if kind == "code":
        submission["codes"] = codes
    manifest = {
        "format": "comp.bundle/1",
        "classes": CLASSES,
        "graphs": [
            {
                "file": f,
                "weight": wt,
                "image_size": list(hw),
                "mean": m,
                "std": s,
                "input": "input",
                "output": "probs",
            }
            for f, hw, m, s, wt, _, _ in GRAPHS
        ],
        "id_column": "id",
        "image_ext": ".png",
        "submission": submission,
        "resize_fingerprint": bp.resize_fingerprint(cv2_resize),  # what `comp bundle` records at build time
    }
    manifest.update(manifest_overrides)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def write_sample(path: Path, header: list[str], ids=IDS, filler: str = "0") -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[rid] + [filler] * (len(header) - 1) for rid in ids])
    return path


def run_predict(bundle: Path, images: Path, sample: Path, out: Path, *extra: str, env=None):
    cmd = [sys.executable, str(bundle / "predict.py"), "--images", str(images), "--sample", str(sample)]
    cmd += ["--out", str(out), "--provider", "cpu", "--threads", "1", "--batch-size", "5", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_label_submission_and_probs(world, tmp_path):
    bundle = make_bundle(world, "label")
    sample = write_sample(tmp_path / "sample.csv", ["id", "label"], filler="cat")
    out, probs = tmp_path / "sub.csv", tmp_path / "probs.csv"
    res = run_predict(bundle, world["images"], sample, out, "--probs", str(probs))
    assert res.returncode == 0, res.stderr
    assert "CPUExecutionProvider" in res.stderr and "resize: cv2" in res.stderr
    assert "predict 6/6 (100%)" in res.stderr  # stderr is a pipe: plain progress lines
    rows = read_csv(out)
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == IDS
    assert [r[1] for r in rows[1:]] == [CLASSES[k] for k in world["probs"].argmax(1)]
    p = read_csv(probs)
    assert p[0] == ["id", *CLASSES] and [r[0] for r in p[1:]] == IDS
    np.testing.assert_allclose(np.array([r[1:] for r in p[1:]], dtype=float), world["probs"], atol=2e-6)
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left a temporary file"


@pytest.mark.parametrize("codes", [{"cat": 10, "dog": 20, "fox": 30}, None], ids=["mapped", "index"])
def test_code_submission(world, tmp_path, codes):
    # path_template wins over image_ext (a wrong one here) when both are set, as in comp
    paths = {} if codes else {"image_ext": ".jpg", "path_template": "{id}.png"}
    bundle = make_bundle(world, "code", kind="code", codes=codes, **paths)
    sample = write_sample(tmp_path / "sample.csv", ["id", "code"])
    res = run_predict(bundle, world["images"], sample, tmp_path / "sub.csv", "--quiet")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    rows = read_csv(tmp_path / "sub.csv")
    want = [str(codes[CLASSES[k]] if codes else k) for k in world["probs"].argmax(1)]
    assert rows[0] == ["id", "code"] and [r[0] for r in rows[1:]] == IDS and [r[1] for r in rows[1:]] == want


def test_proba_submission_follows_sample_columns(world, tmp_path):
    bundle = make_bundle(world, "proba", kind="proba")
    sample = write_sample(tmp_path / "sample.csv", ["id", "fox", "cat", "dog"], filler="0.333")
    res = run_predict(bundle, world["images"], sample, tmp_path / "sub.csv", "--provider", "auto")
    assert res.returncode == 0, res.stderr
    assert "ExecutionProvider" in res.stderr.splitlines()[0]  # CUDA where it starts, else a CPU fallback
    rows = read_csv(tmp_path / "sub.csv")
    assert rows[0] == ["id", "fox", "cat", "dog"] and [r[0] for r in rows[1:]] == IDS
    order = [CLASSES.index(c) for c in rows[0][1:]]
    got = np.array([r[1:] for r in rows[1:]], dtype=float)
    np.testing.assert_allclose(got, world["probs"][:, order], atol=1e-5)  # float32 on CPU or GPU


def test_read_only_folders_and_numpy_resize_give_identical_output(world, tmp_path):
    bundle = make_bundle(world, "readonly")
    sample = write_sample(tmp_path / "sample.csv", ["id", "label"])
    before = (snapshot(bundle), snapshot(world["images"]))
    chmod_tree(bundle, writable=False)
    chmod_tree(world["images"], writable=False)
    try:
        with_cv2 = run_predict(
            bundle, world["images"], sample, tmp_path / "cv2.csv", "--probs", str(tmp_path / "p1.csv")
        )
        # cv2 made unimportable: a package of that name that raises ImportError shadows the real one
        fake = tmp_path / "no_cv2"
        (fake / "cv2").mkdir(parents=True)
        (fake / "cv2" / "__init__.py").write_text("raise ImportError('cv2 blocked by the test')\n")
        env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
        without = run_predict(
            bundle, world["images"], sample, tmp_path / "np.csv", "--probs", str(tmp_path / "p2.csv"), env=env
        )
    finally:
        chmod_tree(bundle, writable=True)
        chmod_tree(world["images"], writable=True)
    assert with_cv2.returncode == 0, with_cv2.stderr
    assert without.returncode == 0, without.stderr
    assert "resize: cv2" in with_cv2.stderr and "resize: numpy (cv2 not importable)" in without.stderr
    assert (snapshot(bundle), snapshot(world["images"])) == before, "predict.py wrote into a read-only folder"
    assert (tmp_path / "cv2.csv").read_bytes() == (tmp_path / "np.csv").read_bytes()
    assert (tmp_path / "p1.csv").read_bytes() == (tmp_path / "p2.csv").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# errors: one line, exit code 2, no traceback


def run_error(*args):
    """A run expected to fail: --quiet, so stderr must hold exactly the error line."""
    return run_predict(*args, "--quiet")


def _assert_error(res, *needles: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_error_missing_graph(world, tmp_path):
    bundle = make_bundle(world, "err_graph")
    (bundle / "b.onnx").unlink()
    res = run_error(bundle, world["images"], write_sample(tmp_path / "s.csv", ["id", "label"]), tmp_path / "o.csv")
    _assert_error(res, "b.onnx", "graphs[1].file", "missing")


def _set_weight(m):
    m["graphs"][0]["weight"] = -1


def _drop_std(m):
    del m["graphs"][1]["std"]


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda m: m.update(format="comp.bundle/9"), "format"),
        (lambda m: m.update(classes="cat"), "classes"),
        (_set_weight, "graphs[0].weight"),
        (_drop_std, "graphs[1].std"),
        (lambda m: m.pop("id_column"), "id_column"),
        (lambda m: m["submission"].update(kind="rank"), "submission.kind"),
    ],
    ids=["format", "classes", "weight", "no_std", "no_id_column", "kind"],
)
def test_error_bad_manifest(world, tmp_path, mutate, needle):
    bundle = make_bundle(world, "err_manifest")
    manifest = json.loads((bundle / "manifest.json").read_text())
    mutate(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    res = run_error(bundle, world["images"], write_sample(tmp_path / "s.csv", ["id", "label"]), tmp_path / "o.csv")
    _assert_error(res, "manifest.json", needle)
    assert not (tmp_path / "o.csv").exists()


def test_error_manifest_not_json(world, tmp_path):
    bundle = make_bundle(world, "err_json")
    (bundle / "manifest.json").write_text("{not json")
    res = run_error(bundle, world["images"], write_sample(tmp_path / "s.csv", ["id", "label"]), tmp_path / "o.csv")
    _assert_error(res, "manifest.json", "not valid JSON")


def test_error_missing_image_names_the_row(world, tmp_path):
    bundle = make_bundle(world, "err_image")
    sample = write_sample(tmp_path / "s.csv", ["id", "label"], ids=[*IDS, "ghost"])
    res = run_error(bundle, world["images"], sample, tmp_path / "o.csv")
    _assert_error(res, "line 8", "'ghost'", "ghost.png", "not found")


@pytest.mark.parametrize("content", [b"this is not a png", "truncated"], ids=["garbage", "truncated"])
def test_error_unreadable_image(world, tmp_path, content):
    images = tmp_path / "images"
    shutil.copytree(world["images"], images)
    if content == "truncated":
        content = (images / "007.png").read_bytes()[:-200]
    (images / "broken.png").write_bytes(content)
    bundle = make_bundle(world, "err_unreadable")
    sample = write_sample(tmp_path / "s.csv", ["id", "label"], ids=[*IDS, "broken"])
    res = run_error(bundle, images, sample, tmp_path / "o.csv")
    _assert_error(res, "broken.png", "line 8", "unreadable")
    assert not (tmp_path / "o.csv").exists()


def test_error_sample_without_id_column(world, tmp_path):
    bundle = make_bundle(world, "err_sample")
    sample = write_sample(tmp_path / "s.csv", ["image", "label"])
    res = run_error(bundle, world["images"], sample, tmp_path / "o.csv")
    _assert_error(res, "s.csv", "no id column 'id'")


def test_error_out_is_the_sample_or_the_bundle(world, tmp_path):
    bundle = make_bundle(world, "err_out")
    sample = write_sample(tmp_path / "s.csv", ["id", "label"])
    text = sample.read_text()
    _assert_error(run_error(bundle, world["images"], sample, sample), "--out", "is the --sample file")
    (tmp_path / "link.csv").symlink_to(sample)
    _assert_error(run_error(bundle, world["images"], sample, tmp_path / "link.csv"), "is the --sample file")
    _assert_error(run_error(bundle, world["images"], sample, bundle / "manifest.json"), "manifest.json")
    res = run_error(bundle, world["images"], sample, tmp_path / "o.csv", "--probs", str(sample))
    _assert_error(res, "--probs", "is the --sample file")
    res = run_error(bundle, world["images"], sample, tmp_path / "o.csv", "--probs", str(tmp_path / "o.csv"))
    _assert_error(res, "--out and --probs are the same file")
    assert sample.read_text() == text and not (tmp_path / "o.csv").exists()


def test_error_special_files(world, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(world["images"], images)
    (images / "007.png").unlink()
    os.mkfifo(images / "007.png")
    bundle = make_bundle(world, "err_fifo")
    sample = write_sample(tmp_path / "s.csv", ["id", "label"])
    _assert_error(run_error(bundle, images, sample, tmp_path / "o.csv"), "007.png", "is not a regular file (a FIFO)")
    os.mkfifo(tmp_path / "fifo.csv")
    res = run_error(bundle, world["images"], tmp_path / "fifo.csv", tmp_path / "o.csv")
    _assert_error(res, "fifo.csv is not a regular file (a FIFO)")
    assert not (tmp_path / "o.csv").exists()


def test_image_folder_of_links_into_a_pool(world, tmp_path):
    """Links inside --images are followed (decided by the names, as in comp); '..' out of it is refused."""
    images = tmp_path / "images"
    images.mkdir()
    for p in world["images"].iterdir():
        (images / p.name).symlink_to(p)
    bundle = make_bundle(world, "links")
    res = run_predict(bundle, images, write_sample(tmp_path / "s.csv", ["id", "label"]), tmp_path / "o.csv")
    assert res.returncode == 0, res.stderr
    sample = write_sample(tmp_path / "s2.csv", ["id", "label"], ids=[*IDS, "../NA"])
    _assert_error(run_error(bundle, images, sample, tmp_path / "o2.csv"), "leaves the image folder")
