"""Which run wrote which submission file, and where it was uploaded: records kept in the run folders.

``record_submission`` is called where predict and ensemble write their submission; ``record_upload`` where
``comp submit`` uploads one, finding the run by the file's sha256 when ``--run`` is not given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from comp.errors import CompError
from comp.run import file_sha256
from comp.run._submissions import now, read_submissions, update_submissions

log = logging.getLogger(__name__)


def record_submission(
    run_dir: str | Path, path: str | Path | None, *, models: Sequence[str] = (), kind: str = "predict"
) -> Path | None:
    """Note in ``run_dir/submissions.json`` that the run wrote submission ``path`` (None: nothing written);
    returns ``path``, so a call can wrap the write."""
    if path is None:
        return None
    path = Path(path)
    entry = {
        "file": path.name,
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "time": now(),
        "kind": kind,
        "models": [str(m) for m in models],
        "uploads": [],
    }

    def add(records: list[dict]) -> None:
        records.append(entry)

    try:
        update_submissions(run_dir, add)
    except (OSError, CompError) as exc:  # the submission is written; a record that cannot be is worth a warning
        log.warning("submission %s written but not recorded in %s (%s)", path, run_dir, exc)
    return path


def _run_folders(runs_dir: Path) -> list[Path]:
    if (runs_dir / "config.yaml").is_file():
        return [runs_dir]
    return (
        sorted(p for p in runs_dir.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
        if runs_dir.is_dir()
        else []
    )


def find_run(sha256: str, runs_dir: str | Path = "runs") -> Path | None:
    """The run folder (under ``runs_dir``) that recorded a submission with this sha256 (the latest such run)."""
    found = []
    for run in _run_folders(Path(runs_dir)):
        try:
            records = read_submissions(run)
        except CompError:
            continue
        found += [(r.get("time", ""), run) for r in records if r.get("sha256") == sha256]
    return max(found)[1] if found else None


def record_upload(
    path: str | Path,
    competition: str,
    message: str,
    *,
    run_dir: str | Path | None = None,
    runs_dir: str | Path = "runs",
) -> Path | None:
    """Note an upload of ``path`` on the run that wrote it; returns that run folder, or None (with a warning)
    when no run under ``runs_dir`` wrote a file with these bytes and ``run_dir`` is not given."""
    path = Path(path)
    sha = file_sha256(path)
    run = Path(run_dir) if run_dir is not None else find_run(sha, runs_dir)
    if run is None:
        log.warning(
            "uploaded %s, but no run under %s wrote a file with these bytes; pass --run to record it", path, runs_dir
        )
        return None
    upload = {
        "competition": competition,
        "message": message,
        "time": now(),
        "ref": None,
        "status": None,
        "public": None,
        "private": None,
    }

    def add(records: list[dict]) -> None:
        match = [r for r in records if r.get("sha256") == sha]
        if not match:  # uploaded with --run, but written by hand or by another tool: recorded all the same
            match = [{"file": path.name, "path": str(path.resolve()), "sha256": sha, "time": upload["time"],
                      "kind": "external", "models": [], "uploads": []}]  # fmt: skip
            records.append(match[0])
        match[-1].setdefault("uploads", []).append(upload)

    update_submissions(run, add)
    return run
