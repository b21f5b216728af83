"""comp: Kaggle-style image classification from a notebook or the shell.

The pipeline, one function per stage, each reading and writing one run folder::

    import comp

    cfg = comp.demo_config(comp.write_demo_data("data/demo"))  # or comp.load_config("exp.yaml"), a dict, sections
    result = comp.train_folds(cfg, "runs/exp")          # folds.csv, checkpoints, oof.csv, metrics.json
    comp.train_folds(cfg, "runs/exp", devices="all")    # the same, one worker process per GPU
    comp.train_folds(cfg, "runs/exp", ray="auto")       # or one task per fold on a Ray cluster
    result.oof("byobnet")                                # the OOF probabilities as a DataFrame
    comp.predict("runs/exp", tta=["hflip"])              # test.csv per model and a validated submission
    p = comp.load_predictor("runs/exp")                  # the same numbers on any images
    p.predict("new_images/")                             # id, label (tags, values) as the submission states
    comp.blend(["runs/exp/models/byobnet", "runs/exp/models/effnet"], method="hill_climb")
    comp.bundle("runs/blend-hill_climb", out="bundle")   # fused ONNX + manifest + predict.py for an offline notebook
    comp.pseudo_label("runs/blend-hill_climb", out="pseudo.csv")   # confident test rows -> data.extra_train

Nothing here changes the caller's session: no matplotlib backend, logging or library setting is touched
(figures are drawn on Figure objects of their own; Optuna's verbosity and PIL's flags are restored).
Log lines go to the ``comp`` logger, which is silent until you configure logging; in a notebook it prints plain
lines (and training shows a live per-epoch table per fold) with no setup.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING, Any

from comp._version import __version__

logging.getLogger("comp").addHandler(logging.NullHandler())
if "ipykernel" in sys.modules:  # in a notebook, comp's progress lines show without configuring logging
    from comp._progress import notebook_logging

    notebook_logging()

# name -> (module, attribute): imported on first use, so `import comp` and `comp --help` stay fast
_EXPORTS: dict[str, tuple[str, str]] = {
    # config
    "Config": ("comp.config", "Config"),
    "DataConfig": ("comp.config", "DataConfig"),
    "FoldsConfig": ("comp.config", "FoldsConfig"),
    "TrainConfig": ("comp.config", "TrainConfig"),
    "AugmentConfig": ("comp.config", "AugmentConfig"),
    "MixupConfig": ("comp.config", "MixupConfig"),
    "LossConfig": ("comp.config", "LossConfig"),
    "HeadLossConfig": ("comp.config", "HeadLossConfig"),
    "DistillConfig": ("comp.config", "DistillConfig"),
    "ModelConfig": ("comp.config", "ModelConfig"),
    "PredictConfig": ("comp.config", "PredictConfig"),
    "TuneConfig": ("comp.config", "TuneConfig"),
    "TrackConfig": ("comp.config", "TrackConfig"),
    "load_config": ("comp.config", "load_config"),
    # the run folder
    "RunDir": ("comp.run", "RunDir"),
    "Predictions": ("comp.run", "Predictions"),
    "Metrics": ("comp.run", "Metrics"),
    "atomic_write": ("comp.run", "atomic_write"),
    # stages
    "train_folds": ("comp.training", "train_folds"),
    "fetch_weights": ("comp.training", "fetch_weights"),
    "TrainResult": ("comp.training", "TrainResult"),
    "EpochEvent": ("comp.training", "EpochEvent"),
    "predict": ("comp.inference", "predict_run"),
    "PredictResult": ("comp.inference", "PredictResult"),
    "load_predictor": ("comp.inference", "load_predictor"),
    "Predictor": ("comp.inference", "Predictor"),
    "export": ("comp.inference", "export_run"),
    "bundle": ("comp.inference", "bundle_run"),
    "BundleResult": ("comp.inference", "BundleResult"),
    "blend": ("comp.ensembling", "run_ensemble"),
    "compare_blends": ("comp.ensembling", "compare_blends"),
    "BlendResult": ("comp.ensembling", "BlendResult"),
    "CompareResult": ("comp.ensembling", "CompareResult"),
    "tune": ("comp.tuning", "tune"),
    "pseudo_label": ("comp.pseudo", "pseudo_label"),
    "PseudoResult": ("comp.pseudo", "PseudoResult"),
    "TuneResult": ("comp.tuning", "TuneResult"),
    "EdaResult": ("comp.diagnostics", "EdaResult"),
    "ExplainResult": ("comp.diagnostics", "ExplainResult"),
    "BenchDataResult": ("comp.diagnostics", "BenchDataResult"),
    "init_config": ("comp.init", "init_config"),
    "InitResult": ("comp.init", "InitResult"),
    "runs": ("comp.ledger", "runs"),
    "eda": ("comp.diagnostics", "run_eda"),
    "explain": ("comp.diagnostics", "explain_run"),
    "bench_data": ("comp.diagnostics", "bench_data"),
    "submit": ("comp.submission", "submit"),
    "init": ("comp.init", "init_config"),
    "run_demo": ("comp.demo", "run_demo"),
    "demo_config": ("comp.demo", "demo_config"),
    "write_demo_data": ("comp.demo", "write_demo_data"),
    "full_traceback": ("comp.errors", "full_traceback"),
    "submissions": ("comp.ledger", "submissions"),
    "make_submission": ("comp.submission", "make_submission"),
    "validate_submission": ("comp.submission", "validate_submission"),
    "write_submission": ("comp.submission", "write_submission"),
    # registries
    "METRICS": ("comp.metrics", "METRICS"),
    "get_metric": ("comp.metrics", "get_metric"),
    # errors
    "CompError": ("comp.errors", "CompError"),
    "ConfigError": ("comp.errors", "ConfigError"),
    "DataError": ("comp.errors", "DataError"),
    "RunFolderError": ("comp.errors", "RunFolderError"),
    "WorkerError": ("comp.training", "WorkerError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'comp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from comp.config import (
        AugmentConfig,
        Config,
        DataConfig,
        DistillConfig,
        FoldsConfig,
        HeadLossConfig,
        LossConfig,
        MixupConfig,
        ModelConfig,
        PredictConfig,
        TrackConfig,
        TrainConfig,
        TuneConfig,
        load_config,
    )
    from comp.demo import demo_config, run_demo, write_demo_data
    from comp.diagnostics import BenchDataResult, EdaResult, ExplainResult, bench_data
    from comp.diagnostics import explain_run as explain
    from comp.diagnostics import run_eda as eda
    from comp.ensembling import BlendResult, CompareResult, compare_blends
    from comp.ensembling import run_ensemble as blend
    from comp.errors import CompError, ConfigError, DataError, RunFolderError, full_traceback
    from comp.inference import BundleResult, Predictor, PredictResult, load_predictor
    from comp.inference import bundle_run as bundle
    from comp.inference import export_run as export
    from comp.inference import predict_run as predict
    from comp.init import InitResult, init_config
    from comp.init import init_config as init
    from comp.ledger import runs, submissions
    from comp.metrics import METRICS, get_metric
    from comp.pseudo import PseudoResult, pseudo_label
    from comp.run import Metrics, Predictions, RunDir, atomic_write
    from comp.submission import make_submission, submit, validate_submission, write_submission
    from comp.training import EpochEvent, TrainResult, WorkerError, fetch_weights, train_folds
    from comp.tuning import TuneResult, tune
