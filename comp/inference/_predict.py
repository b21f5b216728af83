"""``comp predict``: fold models (onnxruntime or PyTorch) + TTA -> per-model ``test.csv``, optional TTA OOF, a submission.

Images are decoded once per batch and fed to every fold, so k folds cost one pass over the files.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from comp.run import _rundir as artifacts
from comp.config import _schema as C
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table, load_train_table, read_csv
from comp.training._engine import resolve_device
from comp.errors import CompError
from comp.inference._export import INPUT, OUTPUT, ProbModel, export_model, select_models
from comp.metrics import get_metric
from comp.training._models import load_checkpoint, model_from_checkpoint
from comp.submission._format import make_submission, write_submission
from comp.inference._tta import check_merge, merge_probs, parse_tta, views

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def providers() -> list[str]:
    """onnxruntime providers to try, best first; GPU ones only when a CUDA device is visible (the -gpu wheel lists them anyway)."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in avail] if torch.cuda.is_available() else []
    return gpu + ["CPUExecutionProvider"]


class OrtRunner:
    """One onnxruntime session: float32 NCHW batch in, probabilities out (I/O binding on CUDA)."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # one process per machine is the norm here; torch's thread count already reflects the user's setting
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        chain, errors = providers(), []
        while chain:
            try:
                self.session = ort.InferenceSession(str(path), opts, providers=chain)
                break
            except Exception as exc:  # noqa: BLE001 - a GPU provider that cannot start falls back to the next one
                errors.append(f"{chain[0]}: {type(exc).__name__}")
                chain = chain[1:]
        else:
            raise CompError(f"onnxruntime cannot open {path} ({'; '.join(errors)}); re-run `comp export`")
        self.cuda = "CUDAExecutionProvider" in self.session.get_providers()
        shape = self.session.get_inputs()[0].shape
        self(np.zeros((1, *shape[1:]), np.float32))  # warm-up: first run allocates and picks kernels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT, x)
            binding.bind_output(OUTPUT, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([OUTPUT], {INPUT: x})[0]


class TorchRunner:
    """A PyTorch fold model with softmax: float32 NCHW batch in, probabilities out."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = ProbModel(model).eval().to(device), device

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)).cpu().numpy()


class _Lazy:
    """Opens its onnxruntime session on first use: when predict runs fused.onnx, the per-fold sessions never open."""

    def __init__(self, make):
        self.make, self.runner = make, None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.runner is None:
            self.runner = self.make()
        return self.runner(x)


@dataclass
class Fold:
    """One fold's model, ready to run."""

    fold: int
    ckpt: dict
    runner: object


def _onnx_stale(onnx_path: Path, ckpt_path: Path) -> bool:
    return not onnx_path.is_file() or onnx_path.stat().st_mtime < ckpt_path.stat().st_mtime


def load_folds(run: artifacts.RunDir, model_id: str, cfg: dict, engine: str, log=print) -> list[Fold]:
    """Every fold of a model as a runner; the onnx engine exports (with its parity check) missing or older graphs."""
    paths = run.checkpoints(model_id)
    if engine == "onnx" and any(_onnx_stale(p.with_suffix(".onnx"), p) for p in paths):
        log(f"{model_id}: no up-to-date ONNX files; exporting them now (same as `comp export`)")
        export_model(run, model_id, cfg, log=log)
    device = resolve_device(cfg["device"])
    out = []
    for p in paths:
        model, ckpt = model_from_checkpoint(load_checkpoint(p))
        runner = _Lazy(lambda p=p: OrtRunner(p.with_suffix(".onnx"))) if engine == "onnx" else TorchRunner(model, device)
        out.append(Fold(ckpt["fold"], ckpt, runner))
    sizes = {(tuple(f.ckpt["image_size"]), tuple(f.ckpt["classes"])) for f in out}
    if len(sizes) > 1:
        raise CompError(f"folds of {run.model_dir(model_id)} disagree on image size or classes; retrain them with one config")
    return out


def usable_fused(run: artifacts.RunDir, model_id: str, folds: list[Fold], tta: list[str], merge: str) -> Path | None:
    """``fused.onnx`` when it was built from exactly these checkpoints (same folds, newer than each) with
    the requested TTA views and merge; otherwise None and the per-fold graphs are used."""
    from comp.inference._export import read_metadata

    path = run.model_dir(model_id) / "fused.onnx"
    ckpts = run.checkpoints(model_id)
    if not path.is_file() or any(_onnx_stale(path, c) for c in ckpts):
        return None
    try:
        meta = read_metadata(path)
    except Exception:  # noqa: BLE001 - an unreadable fused graph is simply not used
        return None
    same = (meta.get("folds") == [f.fold for f in folds] and list(meta.get("tta", [])) == list(tta)
            and (meta.get("tta_merge", "mean") == merge or not tta))
    return path if same else None


def run_views(runners: list, paths: list[Path], transform, tta: list[str], merge: str, batch_size: int,
              num_workers: int = 0, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(plain, merged-TTA) probabilities, each (runners, N, C), decoding every image once for all runners."""
    loader = DataLoader(ImageDataset(paths, transform=transform), batch_size=batch_size, num_workers=num_workers)
    plain, merged = [[] for _ in runners], [[] for _ in runners]
    for x, _ in tqdm(loader, desc=desc, leave=False, file=sys.stderr, disable=not desc):
        xs = [v.float().numpy() for v in views(x.float(), tta)]
        for i, run in enumerate(runners):
            probs = np.stack([run(v) for v in xs])
            plain[i].append(probs[0])
            merged[i].append(merge_probs(probs, merge))
    return np.stack([np.concatenate(p) for p in plain]), np.stack([np.concatenate(m) for m in merged])


def _check_sample(data: dict, test_ids: pd.Series) -> Path | None:
    """The sample submission path after checking it lists exactly the test ids (None when the config has none)."""
    if not data.get("sample_submission"):
        return None
    path = Path(data["sample_submission"])
    sample = read_csv(path, "sample submission")
    id_col = data["id_column"] if data["id_column"] in sample.columns else sample.columns[0]
    want, got = set(sample[id_col]), set(test_ids)
    if want != got:
        first = next(iter(sorted(want - got) or sorted(got - want)))
        raise CompError(f"{path}: {len(want - got)} ids missing from and {len(got - want)} extra in the test ids "
                        f"(first: {first!r}); point data.sample_submission and data.test_csv at the same competition")
    return path


def prob_frame(id_col: str, ids, classes: list[str], probs: np.ndarray) -> pd.DataFrame:
    """id column then one probability column per class."""
    return pd.concat([pd.DataFrame({id_col: np.asarray(ids)}), pd.DataFrame(probs, columns=classes)], axis=1)


def oof_tta(run: artifacts.RunDir, model_id: str, cfg: dict, folds: list[Fold], tta: list[str], merge: str,
            batch_size: int, progress: bool) -> dict:
    """Each fold's model with TTA on its own validation rows: write ``oof_tta.csv``; return CV without and with TTA."""
    data = cfg["data"]
    table = load_train_table(data)
    id_col = data["id_column"]
    if not run.folds.is_file():
        raise CompError(f"{run.folds} not found; --oof needs the fold assignment that train-folds wrote")
    fold_of = pd.read_csv(run.folds, dtype={id_col: str}).set_index(id_col)["fold"].reindex(table.df[id_col]).to_numpy()
    if np.isnan(fold_of.astype(float)).any():
        raise CompError(f"{run.folds} lacks some ids of {data['train_csv']}; the training table changed since train-folds")
    classes = folds[0].ckpt["classes"]
    plain = np.full((len(table.df), len(classes)), np.nan)
    merged = plain.copy()
    for f in folds:
        idx = np.flatnonzero(fold_of == f.fold)
        p, m = run_views([f.runner], [table.paths[i] for i in idx], from_dict(f.ckpt["eval_transform"]), tta, merge,
                         batch_size, data["num_workers"], f"{model_id} oof fold {f.fold}" if progress else "")
        plain[idx], merged[idx] = p[0], m[0]
    done = ~np.isnan(merged[:, 0])
    metric = get_metric(cfg["metric"])
    out = pd.DataFrame({id_col: table.df[id_col], "fold": fold_of.astype(int),
                        "target": np.asarray(table.classes, dtype=object)[table.targets]})
    out = pd.concat([out, pd.DataFrame(merged, columns=classes)], axis=1)[done]
    artifacts.write_csv(run.model_dir(model_id) / "oof_tta.csv", out)
    y = table.targets[done]
    return {"cv": float(metric(y, plain[done])), "cv_tta": float(metric(y, merged[done])), "metric": metric.name}


def resolve_options(cfg: dict, engine, tta, tta_merge, batch_size) -> tuple[str, list[str], str, int]:
    """CLI options over the config's ``predict`` block, validated."""
    p = cfg["predict"]
    engine = engine or p["engine"]
    if engine not in ("onnx", "torch"):
        raise CompError(f"--engine must be onnx or torch, got {engine!r}")
    batch_size = p["batch_size"] if batch_size is None else batch_size
    if batch_size < 1:
        raise CompError(f"--batch-size must be >= 1, got {batch_size}")
    return engine, parse_tta(p["tta"] if tta is None else tta), check_merge(tta_merge or p["tta_merge"]), batch_size


def predict_run(run_dir: str | Path, model_ids=None, engine: str | None = None, tta=None, tta_merge: str | None = None,
                overrides=(), out: str | Path | None = None, oof: bool = False, batch_size: int | None = None,
                progress: bool = True, log=print) -> dict:
    """Predict the test set with every chosen model of a run; write test.csv per model and the submission."""
    run = artifacts.RunDir(run_dir)
    mids = select_models(run, model_ids)
    cfg = C.resolve_paths(C.validate(C.apply_overrides(run.load_config(), overrides)), Path.cwd())
    engine, tta, merge, bs = resolve_options(cfg, engine, tta, tta_merge, batch_size)
    data = cfg["data"]
    test_df, paths = load_test_table(data)
    sample = _check_sample(data, test_df[data["id_column"]])
    result: dict = {"models": {}, "engine": engine, "tta": tta, "tta_merge": merge, "submission": None}
    probs_by_model, classes = [], None
    for mid in mids:
        folds = load_folds(run, mid, cfg, engine, log)
        ck = folds[0].ckpt
        if classes is not None and ck["classes"] != classes:
            raise CompError(f"{mid} predicts classes {ck['classes']} but {mids[0]} predicts {classes}; predict them separately")
        classes = ck["classes"]
        fused = usable_fused(run, mid, folds, tta, merge) if engine == "onnx" else None
        if fused is not None:  # one session call per batch does every fold and TTA view
            log(f"{mid}: using {fused} (folds {[f.fold for f in folds]}, tta {','.join(tta) or 'none'})")
            runners, views_tta = [OrtRunner(fused)], []
        else:
            runners, views_tta = [f.runner for f in folds], tta
        _, merged = run_views(runners, paths, from_dict(ck["eval_transform"]), views_tta, merge, bs,
                              data["num_workers"], f"{mid} test" if progress else "")
        probs = merged.mean(0)
        test_path = artifacts.write_csv(run.test_pred(mid), prob_frame(data["id_column"], test_df[data["id_column"]], classes, probs))
        info = {"folds": len(folds), "test": str(test_path), "fused": fused is not None}
        if oof:
            info.update(oof_tta(run, mid, cfg, folds, tta, merge, bs, progress),
                        oof_tta=str(run.model_dir(mid) / "oof_tta.csv"))
        result["models"][mid] = info
        probs_by_model.append(probs)
    if sample is None:
        log("no data.sample_submission in the config: wrote test.csv only (set it with --set data.sample_submission=FILE)")
        return result
    sub = make_submission(test_df[data["id_column"]], np.mean(probs_by_model, axis=0), classes, sample, data["id_column"])
    out = Path(out) if out else Path("submissions") / f"{run.root.resolve().name}.csv"
    result["submission"] = str(write_submission(sub, out, sample, classes, data["id_column"]))
    return result


def result_rows(result: dict) -> list[dict]:
    """One table row per model: folds, engine, TTA and (with --oof) CV without and with TTA."""
    rows = []
    for mid, info in result["models"].items():
        rows.append({"model": mid, "folds": info["folds"], "engine": result["engine"],
                     "tta": ",".join(result["tta"]) or "none", "cv": info.get("cv"), "cv_tta": info.get("cv_tta")})
    return rows
