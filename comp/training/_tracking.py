"""Experiment trackers (``track: {mlflow: URI, tensorboard: DIR, wandb: PROJECT}``), each through its own library:
the resolved config, every epoch's score and loss per model and fold, and at the end each model's CV, its
``metrics.json`` and a plot of its learning curves.

Optional in every sense: a library is imported only when its key is set (a missing one is a one-line error
naming the ``pip install "comp[...]"`` that brings it, before training starts); each tracker runs on a thread of
its own, so a slow or vanished server never holds training up; a tracker that fails warns once and is dropped,
and training goes on. Only the process that writes the run folder (rank 0) tracks.
"""

from __future__ import annotations

import functools
import importlib
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import Config
    from comp.run import RunDir
    from comp.training._results import EpochEvent, TrainResult

log = logging.getLogger(__name__)

PACKAGES = {"mlflow": "mlflow", "tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}
FINISH_TIMEOUT_S = 60.0  # how long the end of a run waits for a tracker to send what it still holds


def require(kind: str) -> Any:
    """Import the library of tracker ``kind``, or a one-line error naming its install command."""
    try:
        return importlib.import_module(PACKAGES[kind])
    except ImportError:
        raise CompError(
            f"config key 'track.{kind}' needs the {kind} package: pip install \"comp[{kind}]\" (or unset track.{kind})"
        ) from None


class Tracker:
    """One tool. ``start`` runs before the first event; every method may raise: the caller turns that into one
    warning and drops the tracker."""

    kind = ""

    def start(self, name: str, config: dict[str, Any]) -> None: ...

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def figure(self, name: str, fig: Any) -> None: ...

    def file(self, path: Path, name: str) -> None: ...

    def close(self, failed: bool) -> None: ...


class TensorBoard(Tracker):
    kind = "tensorboard"

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def start(self, name: str, config: dict[str, Any]) -> None:
        import yaml

        tb = require("tensorboard")
        self.writer = tb.SummaryWriter(log_dir=str(self.folder / name))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def figure(self, name: str, fig: Any) -> None:
        self.writer.add_figure(name, fig)

    def file(self, path: Path, name: str) -> None:
        self.writer.add_text(name, "```\n" + path.read_text() + "\n```")

    def close(self, failed: bool) -> None:
        self.writer.close()


class MLflow(Tracker):
    kind = "mlflow"

    def __init__(self, uri: str):
        self.uri = uri

    def start(self, name: str, config: dict[str, Any]) -> None:
        require("mlflow")
        from mlflow.tracking import MlflowClient  # a client of its own: the caller's mlflow.set_tracking_uri stays

        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name("comp")
        experiment = found.experiment_id if found is not None else self.client.create_experiment("comp")
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        self.client.log_dict(self.run_id, config, "config.yaml")

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def figure(self, name: str, fig: Any) -> None:
        self.client.log_figure(self.run_id, fig, f"{name}.png")

    def file(self, path: Path, name: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(name).parent))

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class WandB(Tracker):
    kind = "wandb"

    def __init__(self, project: str, folder: Path):
        self.project, self.folder = project, folder

    def start(self, name: str, config: dict[str, Any]) -> None:
        wandb = require("wandb")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=name, config=config, dir=str(self.folder), reinit="create_new")
        self.step = 0

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.step += 1  # W&B's step only grows; each fold's epoch goes in as a value of its own
        self.run.log({**values, "epoch": step}, step=self.step)

    def figure(self, name: str, fig: Any) -> None:
        import io

        import wandb
        from PIL import Image

        png = io.BytesIO()  # as a picture: wandb.Image of a Figure would import pyplot into the caller's session
        fig.savefig(png, format="png", dpi=90, bbox_inches="tight")
        png.seek(0)
        self.run.log({name: wandb.Image(Image.open(png))}, step=self.step)

    def file(self, path: Path, name: str) -> None:
        self.run.save(str(path), base_path=str(path.parents[len(Path(name).parts) - 1]), policy="now")

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Worker:
    """Runs one tracker's calls in order on a daemon thread; the first failure is one warning and the end of it."""

    def __init__(self, tracker: Tracker):
        self.tracker, self.failed = tracker, False
        self.calls: queue.Queue[tuple[Callable[..., None], tuple] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"comp-track-{tracker.kind}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.calls.get()) is not None:
            fn, args = item
            if self.failed and fn.__name__ != "close":
                continue
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - any failure of a tracker: training goes on without it
                if self.failed:  # closing a failed tracker is a courtesy (flush what it holds), never a second warning
                    continue
                self.failed = True
                why = " ".join(str(exc).split())[:200] or type(exc).__name__
                log.warning("tracker %s failed (%s); training goes on without it", self.tracker.kind, why)

    def call(self, name: str, *args: Any) -> None:
        self.calls.put((getattr(self.tracker, name), args))

    def finish(self, failed: bool) -> None:
        self.call("close", failed)
        self.calls.put(None)
        self.thread.join(FINISH_TIMEOUT_S)
        if self.thread.is_alive():
            log.warning(
                "tracker %s is still sending after %.0f s; its last records may be lost",
                self.tracker.kind,
                FINISH_TIMEOUT_S,
            )


def trackers(cfg: Config, run: RunDir) -> list[Tracker]:
    """The trackers ``cfg.track`` names, each library checked now (before any training)."""
    t = cfg.track
    if t is None:
        return []
    out: list[Tracker] = []
    if t.tensorboard:
        require("tensorboard")
        out.append(TensorBoard(t.tensorboard))
    if t.mlflow:
        require("mlflow")
        out.append(MLflow(t.mlflow))
    if t.wandb:
        require("wandb")
        out.append(WandB(t.wandb, run.root / "wandb"))
    return out


class Tracking:
    """What train_folds reports, fanned out to every tracker's worker."""

    def __init__(self, cfg: Config, run: RunDir, found: list[Tracker]):
        self.cfg, self.run, self.started = cfg, run, False
        self.workers = [Worker(t) for t in found]

    def _start(self) -> None:
        if not self.started:
            self.started = True
            for w in self.workers:
                w.call("start", self.run.root.resolve().name, self.cfg.to_dict())

    def epoch(self, ev: EpochEvent) -> None:
        self._start()
        key, metric = f"{ev.model_id}/fold{ev.fold}", self.cfg.metric
        values = {f"{key}/best_{metric}": ev.best_score} if ev.fold_done else {f"{key}/{metric}": ev.score}
        if not ev.fold_done and ev.loss is not None:
            values[f"{key}/loss"] = ev.loss
        values = {k: float(v) for k, v in values.items() if v is not None}
        for w in self.workers:
            w.call("scalars", values, ev.epoch + 1)

    def finish(self, result: TrainResult | None) -> None:
        self._start()
        if result is not None:
            for mid, model in result.models.items():
                self._artifacts(mid, model.cv)
        for w in self.workers:
            w.finish(failed=result is None)

    def _artifacts(self, mid: str, cv: float | None) -> None:
        values = {f"{mid}/cv": cv}
        metrics_file = self.run.metrics(mid)
        if metrics_file.is_file():
            std = self.run.read_metrics(mid).fold_std
            values[f"{mid}/fold_std"] = std
        values = {k: float(v) for k, v in values.items() if v is not None}
        fig = curves(self.run, mid, self.cfg.metric or "score")
        for w in self.workers:
            if values:
                w.call("scalars", values, 0)
            if metrics_file.is_file():
                w.call("file", metrics_file, f"{mid}/metrics.json")
            if fig is not None:
                w.call("figure", f"{mid}/learning_curves", fig)


def curves(run: RunDir, mid: str, metric: str) -> Any:
    """A figure of every fold's score and loss by epoch (from the fold histories), or None without them."""
    import pandas as pd
    from matplotlib.figure import Figure

    files = sorted(run.model_dir(mid).glob("fold*.history.csv"))
    if not files:
        return None
    fig = Figure(figsize=(9, 3.5))
    score_ax, loss_ax = fig.subplots(1, 2)
    for path in files:
        hist = pd.read_csv(path)
        fold = path.name.split(".")[0]
        x = hist["epoch"] + 1 if "epoch" in hist else range(1, len(hist) + 1)
        score_ax.plot(x, hist["score"], marker="o", label=fold)
        loss_ax.plot(x, hist["loss"], marker="o", label=fold)
    score_ax.set(title=f"{mid}: {metric} by epoch", xlabel="epoch")
    loss_ax.set(title=f"{mid}: training loss", xlabel="epoch")
    score_ax.legend(fontsize=7)
    return fig


def tracked(train_folds: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Wrap ``train_folds`` so that ``cfg.track`` (rank 0 only) sees every epoch and the final artifacts."""

    @functools.wraps(train_folds)
    def wrapper(cfg: Config, run_dir: str | Path, *args: Any, on_epoch: Callable | None = None, **kwargs: Any):
        import os

        from comp.run import RunDir

        rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
        found = trackers(cfg, RunDir(run_dir)) if rank == 0 else []
        if not found:
            return train_folds(cfg, run_dir, *args, on_epoch=on_epoch, **kwargs)
        tracking = Tracking(cfg, RunDir(run_dir), found)

        def both(ev: EpochEvent) -> None:
            tracking.epoch(ev)
            if on_epoch is not None:
                on_epoch(ev)

        try:
            result = train_folds(cfg, run_dir, *args, on_epoch=both, **kwargs)
        except BaseException:
            tracking.finish(None)
            raise
        tracking.finish(result)
        return result

    return wrapper
