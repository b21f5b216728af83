"""``comp runs --sync``: the leaderboard scores of past uploads, fetched with the kaggle package and stored on
the upload records of the run folders they came from.

A Kaggle submission is matched to a recorded upload of the same competition by file name and time (within
``WINDOW_S`` of the upload), or by its description when the times are off; a submission whose file comp wrote
but that was uploaded another way (the website) is matched by file name to the latest file written before it.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from comp.errors import CompError
from comp.ledger._collect import run_folders
from comp.run._submissions import read_submissions, update_submissions

log = logging.getLogger(__name__)
WINDOW_S = 15 * 60


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _time(value: Any) -> datetime.datetime | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def _score(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def fetch(api: Any, competition: str) -> list[dict[str, Any]]:
    """The competition's submissions from the kaggle API, as plain dicts (old camelCase and new snake_case)."""
    try:
        try:
            found = api.competition_submissions(competition, page_size=100)
        except TypeError:  # kaggle < 1.7 takes no page_size
            found = api.competition_submissions(competition)
    except Exception as exc:  # noqa: BLE001 - network and HTTP failures: one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CompError(f"kaggle could not list the submissions of '{competition}': {first}") from None
    out = []
    for s in found or ():
        if s is None:
            continue
        out.append(
            {
                "ref": str(_field(s, "ref") or ""),
                "file": _field(s, "file_name", "fileName"),
                "time": _time(_field(s, "date")),
                "description": _field(s, "description") or "",
                "status": str(_field(s, "status") or ""),
                "public": _score(_field(s, "public_score", "publicScore")),
                "private": _score(_field(s, "private_score", "privateScore")),
            }
        )
    return out


def _match(upload: dict[str, Any], file: str, remote: list[dict[str, Any]], used: set[str]) -> dict[str, Any] | None:
    at = _time(upload.get("time"))
    same = [r for r in remote if r["ref"] not in used and r["file"] == file]
    if upload.get("ref"):
        hit = [r for r in remote if r["ref"] == upload["ref"]]
        if hit:
            return hit[0]
    near = [r for r in same if at and r["time"] and abs((r["time"] - at).total_seconds()) <= WINDOW_S]
    if near:
        return min(near, key=lambda r: abs((r["time"] - at).total_seconds()))
    described = [r for r in remote if r["ref"] not in used and r["description"] == upload.get("message")]
    return described[0] if len(described) == 1 else None


def _apply(records: list[dict[str, Any]], competition: str, remote: list[dict[str, Any]], used: set[str]) -> int:
    n = 0
    for rec in records:
        for up in rec.get("uploads") or []:
            if up.get("competition") != competition:
                continue
            hit = _match(up, rec.get("file", ""), remote, used)
            if hit is not None:
                used.add(hit["ref"])
                up.update(ref=hit["ref"], status=hit["status"], public=hit["public"], private=hit["private"])
                n += 1
    return n


def _adopt(records: list[dict[str, Any]], competition: str, remote: list[dict[str, Any]], used: set[str]) -> int:
    """Uploads made outside comp: a remote submission of a file this run wrote, after it wrote it."""
    n = 0
    for r in remote:
        if r["ref"] in used or not r["file"] or r["time"] is None:
            continue
        mine = [
            rec
            for rec in records
            if rec.get("file") == r["file"] and (_time(rec.get("time")) or r["time"]) <= r["time"]
        ]
        if not mine:
            continue
        rec = max(mine, key=lambda x: x.get("time", ""))
        rec.setdefault("uploads", []).append(
            {"competition": competition, "message": r["description"], "time": r["time"].isoformat(timespec="seconds"),
             "ref": r["ref"], "status": r["status"], "public": r["public"], "private": r["private"]}
        )  # fmt: skip
        used.add(r["ref"])
        n += 1
    return n


def _update(folder: Path, step, competition: str, remote: list[dict[str, Any]], used: set[str]) -> int:
    found = []

    def change(records: list[dict[str, Any]]) -> None:
        found.append(step(records, competition, remote, used))

    update_submissions(folder, change)
    return sum(found)


def sync_scores(runs_dir: str | Path, *, competition: str | None = None, api: Any = None) -> int:
    """Fetch the scores of every recorded upload (and adopt uploads of comp's files made elsewhere) for
    ``competition``, or for every competition the records name; returns how many uploads got a score."""
    folders = run_folders(runs_dir)
    comps: Iterable[str]
    if competition:
        comps = [competition]
    else:
        comps = sorted(
            {
                str(u["competition"])
                for f in folders
                for rec in read_submissions(f)
                for u in rec.get("uploads") or []
                if u.get("competition")
            }
        )
        if not comps:
            raise CompError(
                "no upload is recorded under the runs folder yet; pass --competition SLUG to match by file name"
            )
    if api is None:
        from comp.submission import kaggle_api

        api = kaggle_api()
    total = 0
    for comp_name in comps:
        remote = fetch(api, comp_name)
        used: set[str] = set()
        counts: list[int] = []
        recorded = [f for f in folders if (f / "submissions.json").is_file()]
        for step in (_apply, _adopt):  # every recorded upload first, then uploads made elsewhere
            counts += [_update(folder, step, comp_name, remote, used) for folder in recorded]
        total += sum(counts)
        log.info("%s: %d of %d Kaggle submissions matched to runs", comp_name, len(used), len(remote))
    return total
