"""The run folder: where every artifact lives, and the one reader and writer of each format.

RUN/
  config.yaml                      resolved config (the single source of truth later commands read)
  folds.csv                        id, fold
  models/<model_id>/fold<k>.pt     self-describing checkpoint of the best epoch
  models/<model_id>/fold<k>.state.pt   resumable training state (deleted when the fold finishes)
  models/<model_id>/fold<k>.lock       host, pid and start time of the process training that fold (while it runs)
  models/<model_id>/fold<k>.oof.csv    that fold's validation probabilities
  models/<model_id>/fold<k>.history.csv  per-epoch loss / score / images per second
  models/<model_id>/oof.csv        id, fold, target, one probability column per class
  models/<model_id>/metrics.json   {"metric", "cv", "folds": [...], ...}
  models/<model_id>/test.csv       id, one probability column per class (comp predict)
  models/<model_id>/oof_tta.csv    OOF with test-time augmentation (comp predict --oof)
  models/<model_id>/fold<k>.onnx   ONNX graph of a fold checkpoint; fused.onnx: every fold (and TTA view) in one
  models/<model_id>/fold<k>.int8.onnx, fused.int8.onnx   the same graphs quantized to int8 (comp export --int8)
  models/<model_id>/export.json    what comp export wrote, its parity figures and the int8 graphs' metric check
  models/<blend>/stack.json        a GBDT blend's inputs (metadata columns, levels, group column) and boosters
  models/<blend>/booster<i>.txt    its fitted LightGBM boosters as LightGBM text models
  .trt_cache/                      TensorRT engine and timing caches (GPU predict)
  cache/                           data.cache=disk slabs, only when the images and $TMPDIR are read-only
  sources.json                     the pseudo-labelled rows and teacher the run trained on (file hashes)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp._tables import format_frame, table_frame
from comp.config import Config, build_config, dump, read_yaml
from comp.errors import CompError, RunFolderError
from comp.run._artifacts import Metrics, Predictions, parse_predictions
from comp.run._checkpoint import Checkpoint, load_checkpoint
from comp.run._io import clean_temporaries, read_json, read_numeric_table, read_table, write_csv, write_json, write_text
from comp.run._journal import FileSet, recover

STACK_FORMAT = "comp.stack/1"


class RunDir:
    """Paths inside one run folder, and typed reads and writes of every artifact in it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})\n{format_frame(self.table())}"

    def _repr_html_(self) -> str:
        import html

        df = self.table()
        body = df.to_html(index=False, na_rep="-", border=0) if len(df) else "<i>no models yet</i>"
        return f"<div><b>RunDir</b> <code>{html.escape(str(self.root))}</code>{body}</div>"

    def table(self) -> pd.DataFrame:
        """One row per model (or blend): its folds, metric and CV as its metrics.json records them."""
        rows = []
        for mid in self.model_folders():
            row: dict[str, Any] = {"model": mid, "folds": len(self.fold_checkpoints(mid)), "metric": None, "cv": None}
            if self.metrics(mid).is_file():
                try:
                    m = self.read_metrics(mid)
                except CompError:
                    row["note"] = "unreadable metrics.json"
                else:
                    row.update(metric=m.metric, cv=m.cv)
                    if (blend := self.blend_info(mid)) is not None:
                        row["note"] = f"blend ({blend['method']}) of {len(blend['members'])}"
            rows.append(row)
        return table_frame(rows, ["model", "folds", "metric", "cv", "note"])

    # -- paths ---------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def folds(self) -> Path:
        return self.root / "folds.csv"

    @property
    def models_root(self) -> Path:
        return self.root / "models"

    def model_dir(self, model_id: str) -> Path:
        return self.models_root / model_id

    def checkpoint(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.pt"

    @staticmethod
    def fold_number(path: str | Path) -> int | None:
        """The fold of a per-fold file (``fold3.pt``, ``fold3.onnx``, ``fold3.oof.csv``), None for other names."""
        head = Path(path).name.split(".", 1)[0]
        digits = head[4:]
        return int(digits) if head.startswith("fold") and digits.isdigit() else None

    def read_history(self, model_id: str, fold: int) -> pd.DataFrame:
        """One row per epoch of a fold: loss, score, images per second (``fold<k>.history.csv``)."""
        path = self.history(model_id, fold)
        if not path.is_file():
            have = sorted(
                int(k)
                for p in self.model_dir(model_id).glob("fold*.history.csv")
                if (k := self.fold_number(p)) is not None
            )
            raise RunFolderError(f"{path} not found; folds of {model_id} with a history: {have or 'none'}")
        return read_table(path, "training history")

    def state(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.state.pt"

    def lock(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.lock"

    def oof_part(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.oof.csv"

    def oof(self, model_id: str, tta: bool = False) -> Path:
        return self.model_dir(model_id) / ("oof_tta.csv" if tta else "oof.csv")

    def metrics(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "metrics.json"

    def history(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.history.csv"

    def test_pred(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "test.csv"

    def onnx(self, model_id: str, fold: int, *, int8: bool = False) -> Path:
        return self.model_dir(model_id) / f"fold{fold}{'.int8' if int8 else ''}.onnx"

    def fused(self, model_id: str, *, int8: bool = False) -> Path:
        return self.model_dir(model_id) / f"fused{'.int8' if int8 else ''}.onnx"

    def export_report(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "export.json"

    @property
    def trt_cache(self) -> Path:
        return self.root / ".trt_cache"

    @property
    def cache(self) -> Path:
        """The decoded-image cache's last resort (see ``comp.data._cache.disk_cache_dir``)."""
        return self.root / "cache"

    @property
    def sources(self) -> Path:
        return self.root / "sources.json"

    # -- what is there -------------------------------------------------------------
    def model_ids(self) -> list[str]:
        """The run's models, in name order: those with at least one finished fold checkpoint; in a blend's run
        folder (no checkpoints), the blend, whose tables read like any model's."""
        return self.trained_ids() or self.blend_ids()

    def trained_ids(self) -> list[str]:
        """Model folders that hold at least one finished fold checkpoint, in name order."""
        if not self.models_root.is_dir():
            return []
        return sorted(d.name for d in self.models_root.iterdir() if d.is_dir() and self.checkpoints(d.name))

    def blend_ids(self) -> list[str]:
        """Model folders written by comp ensemble (their metrics.json names a method and members)."""
        return [m for m in self.model_folders() if not self.checkpoints(m) and self.blend_info(m) is not None]

    def model_folders(self) -> list[str]:
        """Every folder under models/ (trained models and blends alike), in name order."""
        if not self.models_root.is_dir():
            return []
        return sorted(d.name for d in self.models_root.iterdir() if d.is_dir())

    def checkpoints(self, model_id: str) -> list[Path]:
        """Finished fold checkpoints of one model, by fold number."""
        return list(self.fold_checkpoints(model_id).values())

    def fold_checkpoints(self, model_id: str) -> dict[int, Path]:
        """{fold: checkpoint path} of one model's finished folds, by fold number."""
        folder = self.model_dir(model_id)
        if not folder.is_dir():
            return {}
        found = {self.fold_number(p): p for p in folder.glob("fold*.pt") if p.name.count(".") == 1}
        return {k: found[k] for k in sorted(k for k in found if k is not None)}

    def blend_info(self, model_id: str) -> dict[str, Any] | None:
        """A blend's method, weights and members (from its metrics.json), or None for a trained model."""
        if not self.metrics(model_id).is_file():
            return None
        extra = self.read_metrics(model_id).extra
        return extra if "method" in extra and "members" in extra else None

    def require(self) -> RunDir:
        """Fail with a fixable message unless this looks like a run folder; finish any set of files a killed
        command left half-committed, so what is read next is a complete set."""
        if not self.config.is_file():
            raise RunFolderError(
                f"{self.root} is not a run folder (no config.yaml); run `comp train-folds` first or pass the right path"
            )
        self.recover()
        return self

    def recover(self) -> None:
        """Roll forward half-committed file sets of dead writers and drop their temporaries, at the places comp
        writes (the run folder, each model folder and its explain report), never below them."""
        recover(self.root)
        clean_temporaries(self.root)
        if self.models_root.is_dir():
            for d in self.models_root.iterdir():
                if d.is_dir() and not d.is_symlink():
                    recover(d)
                    clean_temporaries(d)
                    recover(d / "explain")
                    clean_temporaries(d / "explain")

    # -- config --------------------------------------------------------------------
    def load_config(self) -> Config:
        """The resolved config saved by train-folds, validated."""
        self.require()
        raw = read_yaml(self.config)
        try:
            return build_config(raw if raw is not None else {})
        except CompError as exc:
            raise RunFolderError(f"{self.config}: {exc} (the run's saved config; fix or remove it)") from None

    def config_dict(self) -> dict[str, Any]:
        """The saved config as a plain dict (to compare with another config)."""
        self.require()
        raw = read_yaml(self.config)
        return raw if isinstance(raw, dict) else {}

    def save_config(self, cfg: Config) -> Path:
        return write_text(self.config, dump(cfg))

    # -- folds ---------------------------------------------------------------------
    def read_folds(self, id_column: str | None = None) -> pd.DataFrame:
        """``folds.csv`` as a DataFrame: the id column and ``fold`` (int), one row per training row, in its order.

        ``run.read_folds().groupby("fold").size()`` counts each fold's rows; ``fold_of`` looks folds up by id."""
        ids = self.fold_of(id_column)
        return pd.DataFrame({id_column or self.id_column(): ids.index.to_numpy(dtype=object), "fold": ids.to_numpy()})

    def fold_of(self, id_column: str | None = None) -> pd.Series:
        """``folds.csv`` as a Series: id (string) -> fold (int), e.g. ``run.fold_of().reindex(ids)``."""
        id_column = id_column or self.id_column()
        if not self.folds.is_file():
            raise RunFolderError(f"{self.folds} not found; run `comp train-folds` first (it assigns the folds)")
        df = read_table(self.folds, "fold assignment")
        if id_column not in df.columns or "fold" not in df.columns:
            raise RunFolderError(
                f"{self.folds} needs columns '{id_column}' and 'fold' (has {', '.join(df.columns)}); "
                "use a fresh --run-dir"
            )
        folds = pd.to_numeric(df["fold"], errors="coerce")
        if (
            folds.isna().any()
            or (folds % 1 != 0).any()
            or df[id_column].isna().any()
            or df[id_column].duplicated().any()
        ):
            raise RunFolderError(
                f"{self.folds} is damaged (empty or repeated ids, or folds that are not integers); "
                "use a fresh --run-dir"
            )
        return pd.Series(
            folds.astype(np.int64).to_numpy(), index=pd.Index(df[id_column].to_numpy(dtype=object)), name="fold"
        )

    def write_folds(self, ids: Any, folds: np.ndarray, id_column: str) -> Path:
        return write_csv(
            self.folds, pd.DataFrame({id_column: np.asarray(ids, dtype=object), "fold": np.asarray(folds)})
        )

    # -- probability tables -----------------------------------------------------------
    def _read_predictions(self, path: Path, id_column: str, oof: bool, what: str) -> Predictions:
        recover(self.root)  # a killed command's half-committed set is finished before anything is read
        if not path.is_file():
            raise RunFolderError(
                f"{what} {path} not found; "
                + ("finish `comp train-folds` for that model first" if oof else "run `comp predict` first")
            )
        text = (id_column, "fold", "target")  # every other column of a prediction table is a number
        return parse_predictions(read_numeric_table(path, what, text), path, id_column, oof=oof)

    def id_column(self) -> str:
        """The id column named by the run's saved config."""
        data = self.config_dict().get("data")
        col = data.get("id_column") if isinstance(data, dict) else None
        return col if isinstance(col, str) else "id"

    def read_oof(self, model_id: str, *, tta: bool = False, id_column: str | None = None) -> Predictions:
        """``oof.csv`` (``oof_tta.csv`` with ``tta``) of one model."""
        return self._read_predictions(self.oof(model_id, tta), id_column or self.id_column(), True, "OOF file")

    def read_oof_part(self, model_id: str, fold: int, *, id_column: str | None = None) -> Predictions:
        return self._read_predictions(self.oof_part(model_id, fold), id_column or self.id_column(), True, "OOF file")

    def read_test(self, model_id: str, *, id_column: str | None = None) -> Predictions:
        """``test.csv`` of one model (written by comp predict)."""
        return self._read_predictions(
            self.test_pred(model_id), id_column or self.id_column(), False, "test predictions"
        )

    def write_oof(self, model_id: str, pred: Predictions, tta: bool = False, *, into: FileSet | None = None) -> Path:
        """Write ``oof.csv`` (``oof_tta.csv``) now, or stage it ``into`` a set committed together."""
        return _write(self.oof(model_id, tta), pred.frame(), into)

    def write_oof_part(self, model_id: str, fold: int, pred: Predictions) -> Path:
        return write_csv(self.oof_part(model_id, fold), pred.frame())

    def write_test(self, model_id: str, pred: Predictions, *, into: FileSet | None = None) -> Path:
        return _write(self.test_pred(model_id), pred.frame(), into)

    # -- metrics and checkpoints --------------------------------------------------------
    def read_metrics(self, model_id: str) -> Metrics:
        recover(self.root)
        path = self.metrics(model_id)
        return Metrics.from_json(read_json(path, "metrics file"), path)

    def write_metrics(self, model_id: str, metrics: Metrics, *, into: FileSet | None = None) -> Path:
        if into is not None:
            return into.json(self.metrics(model_id), metrics.to_json())
        return write_json(self.metrics(model_id), metrics.to_json())

    # -- a GBDT blend's boosters (comp ensemble --method gbdt) ---------------------------
    def stack(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "stack.json"

    def write_stack(self, model_id: str, spec: dict[str, Any], boosters: list[dict], *, into: FileSet) -> Path:
        """Stage a stack's boosters (each ``{"text": LightGBM model, "rounds"}`` -> ``booster<i>.txt``, or
        ``{"constant": [...]}`` kept in place) and ``stack.json`` listing them ``into`` the blend's set of files."""
        entries = []
        for i, b in enumerate(boosters):
            if "text" in b:
                into.text(self.model_dir(model_id) / f"booster{i}.txt", b["text"])
                entries.append({"file": f"booster{i}.txt", "rounds": b["rounds"]})
            else:
                entries.append({"constant": list(b["constant"]), "rounds": 0})
        return into.json(self.stack(model_id), {"format": STACK_FORMAT, **spec, "boosters": entries})

    def read_stack(self, model_id: str) -> dict[str, Any] | None:
        """``stack.json`` (None when the blend saved no boosters); each booster file it lists must be there."""
        path = self.stack(model_id)
        if not path.is_file():
            return None
        obj = read_json(path, "stack file")
        if not isinstance(obj, dict) or obj.get("format") != STACK_FORMAT or not isinstance(obj.get("boosters"), list):
            raise RunFolderError(f"{path} is not a comp stack file; re-run comp ensemble --method gbdt")
        for b in obj["boosters"]:
            if "file" in b and not (self.model_dir(model_id) / b["file"]).is_file():
                raise RunFolderError(f"{path} lists {b['file']}, which is missing; re-run comp ensemble --method gbdt")
        return obj

    def clear_stack(self, model_id: str, keep: tuple[str, ...] = ()) -> None:
        """Delete stack files an earlier blend of this name left that the current one did not write."""
        for p in [self.stack(model_id), *self.model_dir(model_id).glob("booster*.txt")]:
            if p.name not in keep:
                p.unlink(missing_ok=True)

    def read_checkpoint(self, model_id: str, fold: int) -> Checkpoint:
        return load_checkpoint(self.checkpoint(model_id, fold))

    def fold_files(self, model_id: str, fold: int) -> list[Path]:
        """What a finished fold leaves in its model folder: history, OOF part and checkpoint (last: its presence
        says the fold is done)."""
        return [self.history(model_id, fold), self.oof_part(model_id, fold), self.checkpoint(model_id, fold)]

    def commit_fold_files(self, model_id: str, fold: int, files: dict[str, bytes]) -> list[Path]:
        """Commit a fold trained elsewhere (a Ray task on another box): the bytes of its ``fold_files`` by name,
        written as one set, then its resumable state dropped, as a fold finished here leaves them."""
        wanted = {p.name: p for p in self.fold_files(model_id, fold)}
        if set(files) != set(wanted):
            raise RunFolderError(
                f"{model_id} fold {fold}: a remote fold sent {sorted(files)}, expected {sorted(wanted)}; "
                "the worker runs another version of comp than this driver"
            )
        self.model_dir(model_id).mkdir(parents=True, exist_ok=True)
        with FileSet(self.model_dir(model_id)) as staged:
            for name, path in wanted.items():  # renamed in this order: the checkpoint last
                staged.add(path, _bytes_writer(files[name]))
        self.state(model_id, fold).unlink(missing_ok=True)
        return list(wanted.values())

    # -- what the run learned from besides its labels (data.extra_train, loss.distill) ------------
    def read_sources(self) -> dict[str, Any] | None:
        """``sources.json``: the pseudo-labelled rows and teacher the trained folds used (None when absent)."""
        if not self.sources.is_file():
            return None
        obj = read_json(self.sources, "sources file")
        if not isinstance(obj, dict):
            raise RunFolderError(f"{self.sources} is not a comp sources file; delete it if no fold was trained")
        return obj

    def write_sources(self, record: dict[str, Any]) -> Path:
        return write_json(self.sources, record)


def _bytes_writer(data: bytes) -> Callable[[Path], int]:
    return lambda tmp: tmp.write_bytes(data)


def _write(path: Path, df: pd.DataFrame, into: FileSet | None) -> Path:
    return into.csv(path, df) if into is not None else write_csv(path, df)
