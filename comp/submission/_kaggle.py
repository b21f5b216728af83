"""``comp submit``: validate a submission file against the sample, then upload it with the kaggle package."""

from __future__ import annotations

from pathlib import Path

from comp.data._table import read_csv
from comp.errors import CompError
from comp.run import RunDir
from comp.submission._format import validate_submission
from comp.submission._record import record_upload


def _classes_from_run(run: RunDir) -> list[str]:
    for mid in run.model_folders():  # a blend's run has no checkpoints, only its oof.csv
        oof = run.oof(mid)
        if oof.is_file():
            return run.read_oof(mid).classes
    raise CompError(f"{run.root} has no models/<id>/oof.csv to read the classes from; pass --sample instead")


def _classes_from_sample(sample_path: Path, df, task: str) -> list[str]:
    """Without a run: the sample's class, label or target columns, or (one column) the labels or tags the file
    uses, unchecked (a regression's one column is its target)."""
    targets = list(read_csv(sample_path, "sample submission").columns)[1:]
    if len(targets) != 1 or targets[0] not in df.columns or task == "regression":
        return targets
    cells = df[targets[0]].dropna().astype(str)
    if task == "multilabel":
        return sorted({tag for cell in cells for tag in cell.split()})
    return sorted(cells.unique())


def resolve_sample(
    sample: str | Path | None, run_dir: str | Path | None
) -> tuple[Path, list[str] | None, str | None, str]:
    """(sample path, classes or None, id column or None, task) from --sample or the run's config."""
    if run_dir is not None:
        run = RunDir(run_dir)
        cfg = run.load_config()
        data = cfg.data
        path = sample or data.sample_submission
        if not path:
            raise CompError(f"{run.config} sets no data.sample_submission; pass --sample PATH")
        return Path(path), _classes_from_run(run), data.id_column, cfg.task
    if sample is None:
        raise CompError("comp submit needs --sample PATH or --run RUN_DIR to validate the file against")
    return Path(sample), None, None, "classification"


def check_file(
    path: str | Path, sample: str | Path | None = None, run_dir: str | Path | None = None, *, task: str | None = None
) -> Path:
    """Validate a submission CSV against the sample submission, as the run's task renders it (tags among the
    labels, numeric target values, probabilities in [0, 1], class names or codes). The classes and the task
    come from the run when given; ``task`` overrides it (without a run, the file is checked as classification,
    its classes being the sample's columns or the labels the file uses)."""
    path = Path(path)
    df = read_csv(path, "submission")
    sample_path, classes, id_col, run_task = resolve_sample(sample, run_dir)
    task = task or run_task
    if classes is None:
        classes = _classes_from_sample(sample_path, df, task)
    validate_submission(df, sample_path, classes, id_col, task=task)
    return path


def kaggle_api():
    """The authenticated ``kaggle.api``, or a CompError saying what to install or configure."""
    try:
        import kaggle
    except ImportError:
        raise CompError(
            "the kaggle package is not installed; `pip install kaggle`, then put your API token in "
            "~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and KAGGLE_KEY)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - kaggle authenticates on import and raises whatever the config lacks
        raise CompError(
            f"the kaggle package is not configured ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "put your API token in ~/.kaggle/kaggle.json or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
    return kaggle.api


def submit(
    path: str | Path,
    competition: str,
    message: str,
    sample: str | Path | None = None,
    run_dir: str | Path | None = None,
    runs_dir: str | Path = "runs",
) -> Path:
    """Validate ``path`` and upload it to ``competition`` with ``message``; the upload is recorded on the run that
    wrote the file (``run_dir``, or the run under ``runs_dir`` whose records hold the file's sha256)."""
    if not competition:
        raise CompError("--competition is empty; pass the competition's slug from its Kaggle URL")
    path = check_file(path, sample, run_dir)
    api = kaggle_api()
    try:
        api.competition_submit(str(path), message, competition)
    except Exception as exc:  # noqa: BLE001 - network/HTTP failures are reported as one line, not a traceback
        raise CompError(
            f"kaggle rejected the upload of {path} to '{competition}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    record_upload(path, competition, message, run_dir=run_dir, runs_dir=runs_dir)
    return path
