"""Find the model folder behind a SOURCE or teacher path: a run folder, a model folder or a blend's folder."""

from __future__ import annotations

from pathlib import Path

from comp.errors import RunFolderError
from comp.run._rundir import RunDir


def resolve_source(path: str | Path, needs: str, *, what: str = "source") -> tuple[RunDir, str]:
    """(run folder, model id) of ``path`` that holds the file ``needs`` (``oof.csv`` or ``test.csv``).

    ``path`` may be a model folder ``RUN/models/<id>`` (a blend's is ``<runs>/<blend>/models/<blend>``) or a
    run folder with exactly one model that has the file (a blend's run folder has one)."""
    path = Path(path)
    if not path.is_dir():
        kind = "is a file, not a folder" if path.exists() else "not found"
        if what.startswith("loss."):
            kind += " (a relative path is read from the config file's folder)"
        raise RunFolderError(f"{what} {path} {kind}; pass a run folder, RUN/models/<id>, or a blend's model folder")
    path = path.resolve()
    if (path / "config.yaml").is_file():  # a run folder
        run = RunDir(path)
        folders = sorted(d for d in run.models_root.glob("*") if d.is_dir()) if run.models_root.is_dir() else []
        having = [d.name for d in folders if (d / needs).is_file()]
        if len(having) == 1:
            return run.require(), having[0]
        if not having:
            hint = "run comp predict on it first" if needs == "test.csv" else "finish comp train-folds first"
            raise RunFolderError(f"{what} {path} has no model folder with {needs}; {hint}")
        choices = ", ".join(str(run.model_dir(m)) for m in having)
        raise RunFolderError(
            f"{what} {path} holds {len(having)} models with {needs}; pass one model folder "
            f"({choices}) or blend them first with comp ensemble"
        )
    run = RunDir(path.parent.parent)
    if path.parent.name != "models" or not run.config.is_file():
        raise RunFolderError(
            f"{what} {path} is neither a run folder (no config.yaml) nor a model folder "
            "RUN/models/<id>; pass one of those"
        )
    if not (path / needs).is_file():
        hint = "run comp predict on its run first" if needs == "test.csv" else "finish comp train-folds for it first"
        raise RunFolderError(f"{what} {path} has no {needs}; {hint}")
    return run.require(), path.name
