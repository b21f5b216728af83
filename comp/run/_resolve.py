"""What a path given on the command line names: a run folder, a model folder ``RUN/models/<id>``, or a blend.

A blend written by ``comp ensemble`` is a run folder of its own whose one model folder holds tables and
metrics but no checkpoints; ``metrics.json`` names its method and members. Every command that takes "a run,
a model or a blend folder" (pseudo, bundle, distillation teachers, ensemble members) resolves it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from comp.errors import RunFolderError
from comp.run._rundir import RunDir


@dataclass(frozen=True)
class Located:
    """A path resolved: its run folder and, when the path was a model folder, the model id."""

    run: RunDir
    model_id: str | None
    path: Path

    @property
    def is_run(self) -> bool:
        return self.model_id is None


def locate(path: str | Path, *, what: str = "source", hint: str = "", missing_note: str = "") -> Located:
    """A run folder (it has ``config.yaml``) or a model folder ``RUN/models/<id>``, else a RunFolderError naming
    ``what`` and ending in ``hint`` (default: what to pass instead); ``missing_note`` follows "not found"."""
    hint = hint or "pass a run folder, RUN/models/<id>, or a blend's model folder"
    p = Path(path)
    if not p.is_dir():
        kind = "is a file, not a folder" if p.exists() else "not found"
        raise RunFolderError(f"{what} {path} {kind}{missing_note}; {hint}")
    p = p.resolve()
    if (p / "config.yaml").is_file():
        return Located(RunDir(p), None, p)
    run = RunDir(p.parent.parent)
    if p.parent.name != "models" or not run.config.is_file():
        raise RunFolderError(
            f"{what} {p} is neither a run folder (no config.yaml) nor a model folder RUN/models/<id>; {hint}"
        )
    return Located(run, p.name, p)


def model_with(path: str | Path, needs: str, *, what: str = "source") -> tuple[RunDir, str]:
    """(run folder, model id) of ``path`` whose model folder holds the file ``needs`` (``oof.csv``, ``test.csv``).

    ``path`` may be a model folder (a blend's is ``<runs>/<blend>/models/<blend>``) or a run folder with exactly
    one model that has the file (a blend's run folder has one)."""
    note = " (a relative path is read from the config file's folder)" if what.startswith("loss.") else ""
    found = locate(path, what=what, missing_note=note)
    run = found.run
    if found.model_id is not None:
        if not (run.model_dir(found.model_id) / needs).is_file():
            fix = "run comp predict on its run first" if needs == "test.csv" else "finish comp train-folds for it first"
            raise RunFolderError(f"{what} {found.path} has no {needs}; {fix}")
        return run.require(), found.model_id
    later = "run comp predict on it first" if needs == "test.csv" else "finish comp train-folds first"
    having = [m for m in run.model_folders() if (run.model_dir(m) / needs).is_file()]
    if len(having) == 1:
        return run.require(), having[0]
    if not having:
        raise RunFolderError(f"{what} {found.path} has no model folder with {needs}; {later}")
    choices = ", ".join(str(run.model_dir(m)) for m in having)
    raise RunFolderError(
        f"{what} {found.path} holds {len(having)} models with {needs}; pass one model folder "
        f"({choices}) or blend them first with comp ensemble"
    )
