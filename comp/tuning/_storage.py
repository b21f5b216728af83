"""Where a study lives: the storage a --storage URL (or none: a SQLite file in the tuning folder) names, with
Optuna's heartbeat on, and the checks that refuse a URL that cannot work before anything connects to it."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna

from comp.errors import ConfigError
from comp.tuning._optuna import JournalWithHeartbeat, retry_callback

STORAGE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
MAX_RETRY = 2  # a trial whose worker died is run again at most this often (a config that kills workers stops)


def make_storage(url: str | None, out_dir: Path, heartbeat: int = 60):
    """The study's storage, with Optuna's heartbeat: a worker that stops beating for ``2 * heartbeat`` seconds has
    its RUNNING trial failed and queued again (up to MAX_RETRY times) by whichever worker notices.

    SQLite file in the tuning folder by default; ``journal:PATH`` for a journal file; any RDB URL otherwise.
    """
    grace = 2 * heartbeat
    if url is not None:
        check_storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat is marked experimental
        if url is not None and url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :]).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalWithHeartbeat(JournalFileBackend(str(path)), heartbeat, grace, retry_callback(MAX_RETRY))
        engine_kwargs = None
        if url is None:
            out_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(out_dir / 'study.db').resolve()}"
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait for its lock
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=retry_callback(MAX_RETRY),
            )
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of many types all mean an unusable URL
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            if isinstance(exc, (IntegrityError, ProgrammingError)):
                raise  # the table-creation race between workers: open_study's caller retries
            first = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            raise ConfigError(
                f"--storage {url}: cannot open the study ({type(exc).__name__}: {first}); check the "
                "server, its address and credentials, and that its driver (e.g. psycopg) is installed"
            ) from None


def shared_url(url: str | None, out_dir: Path) -> str:
    """The storage URL as every worker must open it wherever it runs: the default SQLite file and relative
    ``sqlite:``/``journal:`` paths made absolute (so a task on this box finds the driver's file)."""
    if url is None:
        return f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if url.startswith("journal:"):
        return "journal:" + str(Path(url[len("journal:") :]).expanduser().resolve())
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{Path(url[len('sqlite:///') :]).resolve()}"
    return url


def check_storage_url(url: str) -> None:
    """Refuse a --storage value that cannot work, before anything connects to it."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:") :]).expanduser().resolve()
        if path.is_dir():
            raise ConfigError(
                f"--storage {url}: {path} is a folder; name a journal file, e.g. journal:{path / 'study.log'}"
            )
        return
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.split("+")[0] not in STORAGE_SCHEMES:
        raise ConfigError(
            f"--storage {url}: unknown kind of storage; use sqlite:///PATH, postgresql://user@host/db, "
            "mysql://user@host/db or journal:PATH"
        )
    if scheme == "sqlite":
        db = Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None
        if db is None or not str(db):
            raise ConfigError(
                f"--storage {url}: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        if not db.parent.is_dir():
            raise ConfigError(f"--storage {url}: folder {db.parent} does not exist; create it or choose another path")
