"""The run folder: where every artifact lives, and atomic writes so a killed run never leaves a
half-written file that looks complete.

RUN/
  config.yaml                      resolved config (the single source of truth later commands read)
  folds.csv                        id, fold
  models/<model_id>/fold<k>.pt     self-describing checkpoint of the best epoch
  models/<model_id>/fold<k>.state.pt   resumable training state (deleted when the fold finishes)
  models/<model_id>/fold<k>.lock       host, pid and start time of the process training that fold (while it runs)
  models/<model_id>/fold<k>.oof.csv    that fold's validation probabilities
  models/<model_id>/oof.csv        id, fold, target, one probability column per class
  models/<model_id>/metrics.json   {"metric", "cv", "folds": [...]}
  models/<model_id>/history.csv    per-fold, per-epoch loss / score / images per second
  models/<model_id>/test.csv       id, one probability column per class (comp predict)
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from comp.errors import CompError


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    """Atomically write a text file."""
    return _atomic(path, lambda p: p.write_text(text))


def write_json(path, obj) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path, df: pd.DataFrame) -> Path:
    """Atomically write a CSV without the index."""
    return _atomic(path, lambda p: df.to_csv(p, index=False))


def torch_save(path, obj) -> Path:
    """Atomically ``torch.save`` an object."""
    import torch

    return _atomic(path, lambda p: torch.save(obj, p))


def pid_alive(pid) -> bool:
    """Whether a process with this id exists on this machine (another user's process counts)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def exclusive(path, what: str) -> Iterator[None]:
    """Hold ``path`` as a lock file (O_EXCL create) while the block runs: two processes or machines sharing
    a run folder never train the same fold. A lock left by a dead process on this host is taken over; one
    held by a live process, or by another host (whose processes cannot be checked), is a CompError naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _holder(path)
            if held.get("host") == me["host"] and not pid_alive(held.get("pid")):
                # stale: move it aside, and only drop it if what we moved is still that dead holder's lock
                aside = path.with_name(f".{path.name}.{os.getpid()}.stale")
                try:
                    os.replace(path, aside)
                except FileNotFoundError:
                    continue
                if _holder(aside).get("pid") != held.get("pid"):
                    os.replace(aside, path)  # a live process took it meanwhile: put its lock back
                else:
                    aside.unlink(missing_ok=True)
                continue
            who = f"pid {held.get('pid', '?')} on {held.get('host', '?')} since {held.get('since', '?')}"
            raise CompError(f"{what} is being trained by {who} (lock {path}); train other --folds, "
                            f"or delete {path} if that run is dead") from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    else:
        raise CompError(f"could not take the lock {path} for {what}; delete it if no run is training that fold")
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def read_json(path):
    return json.loads(Path(path).read_text())


class RunDir:
    """Paths inside one run folder; every command reads and writes through this."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

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

    def state(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.state.pt"

    def oof_part(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.oof.csv"

    def oof(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "oof.csv"

    def metrics(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "metrics.json"

    def history(self, model_id: str, fold: int) -> Path:
        return self.model_dir(model_id) / f"fold{fold}.history.csv"

    def test_pred(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "test.csv"

    def model_ids(self) -> list[str]:
        """Model folders that hold at least one finished fold checkpoint, in name order."""
        if not self.models_root.is_dir():
            return []
        return sorted(d.name for d in self.models_root.iterdir() if d.is_dir() and list(d.glob("fold[0-9]*.pt")))

    def checkpoints(self, model_id: str) -> list[Path]:
        """Finished fold checkpoints of one model, by fold number."""
        paths = [p for p in self.model_dir(model_id).glob("fold*.pt") if p.stem[4:].isdigit()]
        return sorted(paths, key=lambda p: int(p.stem[4:]))

    def require(self) -> RunDir:
        """Fail with a fixable message unless this looks like a run folder."""
        if not self.config.is_file():
            raise CompError(f"{self.root} is not a run folder (no config.yaml); run `comp train-folds` first or pass the right path")
        return self

    def load_config(self) -> dict:
        """The resolved config saved by train-folds."""
        from comp.config._schema import yaml_load

        self.require()
        return yaml_load(self.config.read_text())
