"""Decoded-image cache: decode each training image once, resized to the model's input size, and reuse it.

``make_reader(data_cfg, hw, paths)`` returns a picklable reader (path -> RGB uint8 array of shape
``(h, w, 3)``) that ``ImageDataset`` calls instead of ``load_image``.

Both modes keep one *slab* per (image list, size): ``len(paths)`` rows of ``h*w*3`` bytes plus one
"filled" byte per row, memory-mapped ``MAP_SHARED``. A row is written before its flag is set, so a
process killed mid-row leaves the row unflagged and it is simply decoded again.

- ``disk``: the slab is a file under ``data.cache_dir`` (default ``<image_dir parent>/.comp_cache``)
  named by a hash of the size and every image's resolved path, mtime and size: an edited, added or
  removed image gives a new slab. It outlives the run, so later folds, models of the same size and
  later runs start warm; the OS page cache keeps hot rows in RAM. When the competition folder is
  read-only (``/kaggle/input``), the default moves to ``$TMPDIR/comp-cache``, else to the run folder,
  and a warning says where: nothing is written beside the images then.
- ``memory``: the slab lives in ``/dev/shm`` (RAM) for the life of the process and is deleted at exit
  (slabs left by killed processes are removed the next time one is created). Folds and models of the
  same size in one process share it; when ``/dev/shm`` is full, this process's slabs for other sizes
  (e.g. earlier ``comp tune`` trials) are deleted to make room before giving up.

Either way the slab is shared with DataLoader workers (a forked worker inherits the mapping, a
spawned one re-opens it by path), so a row decoded by any worker in epoch 1 is read by every process
afterwards. The space is reserved up front with ``posix_fallocate``: a full disk or a small
``/dev/shm`` (Docker's default is 64 MB) is a clear error at start, never a crash mid-epoch.
Paths outside the list (e.g. test images) are decoded and resized without caching.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

import cv2
import numpy as np

from comp.config import DataConfig
from comp.data._table import load_image
from comp.errors import CompError, ConfigError
from comp.run._io import pid_alive
from comp.run._rundir import RunDir

log = logging.getLogger(__name__)
MODES = ("none", "memory", "disk")
_ALIGN = 4096  # rows start on a page boundary after the flag bytes
_OWNED: dict[Path, int] = {}  # memory slabs this process created (path -> pid), deleted at its exit


def decode_resized(path, hw: tuple[int, int]) -> np.ndarray:
    """``load_image`` then resize to ``hw`` (height, width); RGB uint8.

    INTER_LINEAR, exactly what the eval pipeline's ``A.Resize`` does to the original: validation images
    read from the cache are bit-identical to the ones predict and export see, so OOF and test
    predictions come from the same pixels (INTER_AREA would look nicer and shift them).
    """
    img = load_image(path)
    h, w = int(hw[0]), int(hw[1])
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img, dtype=np.uint8)


class ResizeReader:
    """No cache: decode and resize every call (the baseline the benchmark compares against)."""

    def __init__(self, hw):
        self.hw = (int(hw[0]), int(hw[1]))

    def __call__(self, path) -> np.ndarray:
        return decode_resized(path, self.hw)


def slab_key(paths, hw) -> str:
    """Hash of the size and every image's resolved path, mtime and size (a missing image is a CompError)."""
    # /3: 16-bit and float images are scaled by their mode now (comp.data._table.FULL_SCALE): older slabs differ
    h = hashlib.sha1(f"comp-slab/3|{int(hw[0])}x{int(hw[1])}|{len(paths)}".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise CompError(f"image {p} not found; check data.image_dir and the ids in data.train_csv") from None
        h.update(f"|{Path(p).resolve()}|{st.st_mtime_ns}|{st.st_size}".encode())
    return h.hexdigest()[:20]


def human_bytes(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def slab_bytes(n: int, hw) -> int:
    """Size of a slab of ``n`` images at ``hw``: the flag bytes (page-aligned) then the rows."""
    return -(-n // _ALIGN) * _ALIGN + n * int(hw[0]) * int(hw[1]) * 3


def _trusted(path: Path, nbytes: int) -> bool:
    """A slab file this process may use: a regular file (not a symlink) owned by this user, writable by nobody
    else, of the expected size."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022 and st.st_size == nbytes


class SlabReader:
    """Reader backed by a shared memory-mapped slab (see the module docstring)."""

    def __init__(self, file, paths, hw, mode: str):
        self.file = Path(file)
        self.hw = (int(hw[0]), int(hw[1]))
        self.paths = [str(p) for p in paths]
        self.mode = mode
        self.index = {p: i for i, p in enumerate(self.paths)}
        self.offset = -(-len(self.paths) // _ALIGN) * _ALIGN
        self.nbytes = slab_bytes(len(self.paths), self.hw)
        self._views = None
        self._create()

    # -- the slab file ---------------------------------------------------------------
    def _create(self) -> None:
        """Make the slab file at full size, atomically, unless a complete one of our own is already there.

        Slabs are created exclusively (mkstemp: O_EXCL, mode 0600) and renamed into place. An existing file is
        adopted only if it is a regular file (not a symlink) owned by this user, writable by nobody else, of
        the right size: a file planted under a predictable name is replaced, never read or written through."""
        if self.mode == "memory" and os.path.lexists(self.file) and not _trusted(self.file, self.nbytes):
            # /dev/shm is shared by every user: take a fresh, unpredictable name instead of the planted one
            self.file = self.file.with_name(
                f"comp-slab-{os.getpid()}-{secrets.token_hex(4)}-{self.file.name.split('-', 3)[-1]}"
            )
        if _trusted(self.file, self.nbytes):
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.file.name}.", suffix=".tmp", dir=self.file.parent)
        except OSError as e:
            key = "data.cache_dir" if self.mode == "disk" else "data.cache"
            raise CompError(
                f"data.cache={self.mode} cannot write in {self.file.parent} ({e.strerror}); "
                f"set {key} to a writable place"
            ) from None
        try:
            try:
                try:
                    os.posix_fallocate(fd, 0, self.nbytes)
                except OSError:
                    if self.mode != "memory" or not _evict_owned(keep=self.file):
                        raise
                    os.posix_fallocate(fd, 0, self.nbytes)  # again, with this process's older slabs gone
            except OSError as e:
                free = human_bytes(_free_bytes(self.file.parent))
                fix = (
                    "use data.cache=disk, or give the machine more shared memory (docker run --shm-size=...)"
                    if self.mode == "memory"
                    else "free some space or point data.cache_dir at a larger disk"
                )
                raise CompError(
                    f"data.cache={self.mode} needs {human_bytes(self.nbytes)} in {self.file.parent} "
                    f"but only {free} is free ({e.strerror}); {fix}"
                ) from None
            os.close(fd)
            fd = -1
            if self.mode == "memory":
                _OWNED[self.file] = os.getpid()
            try:
                os.link(tmp, self.file)  # atomic; another process may have won the race, which is fine
            except FileExistsError:
                if not _trusted(self.file, self.nbytes):  # damaged, or not ours: replace the name itself
                    os.replace(tmp, self.file)
                    tmp = None  # type: ignore[assignment]
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def views(self):
        """(flags, rows): uint8 ``(n,)`` and ``(n, h, w, 3)`` views of the mapped slab, mapped on first use."""
        if self._views is None:
            if not self.file.is_file():  # e.g. /dev/shm cleared under us: start the slab again
                self._create()
            fd = os.open(self.file, os.O_RDWR | os.O_NOFOLLOW)  # never through a symlink planted after the check
            try:
                st = os.fstat(fd)
                if st.st_uid != os.getuid() or st.st_size != self.nbytes or st.st_mode & 0o022:
                    raise CompError(
                        f"cache slab {self.file} changed owner, size or permissions while in use; "
                        "delete it and run again"
                    )
                with os.fdopen(os.dup(fd), "r+b") as fh:
                    mm = np.memmap(fh, dtype=np.uint8, mode="r+", shape=(self.nbytes,))
            finally:
                os.close(fd)
            n = len(self.paths)
            self._views = (mm[:n], mm[self.offset :].reshape(n, self.hw[0], self.hw[1], 3))
        return self._views

    def filled(self) -> int:
        """How many rows are cached."""
        return int(np.count_nonzero(self.views()[0]))

    def __call__(self, path) -> np.ndarray:
        i = self.index.get(str(path))
        if i is None:
            return decode_resized(path, self.hw)
        flags, rows = self.views()
        if flags[i]:
            return np.array(rows[i])  # a copy: augmentations must never write into the cache
        img = decode_resized(path, self.hw)
        rows[i] = img
        flags[i] = 1
        return img

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_views"] = None  # a spawned worker re-maps the slab by path
        return state


def _free_bytes(folder) -> int:
    try:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize
    except OSError:
        return 0


def _shm_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _remove_stale_memory_slabs(folder: Path) -> None:
    """Delete memory slabs whose creating process is gone (killed runs cannot clean up after themselves)."""
    for f in folder.glob("comp-slab-*-*.u8"):
        try:
            pid = int(f.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            f.unlink(missing_ok=True)


def _evict_owned(keep: Path) -> bool:
    """Delete this process's other memory slabs (earlier image sizes, e.g. earlier tune trials) to make room;
    a reader still mapping one keeps its pages until it is dropped. True when something was deleted."""
    gone = [f for f, pid in _OWNED.items() if pid == os.getpid() and f != keep and f.exists()]
    for f in gone:
        f.unlink(missing_ok=True)
        del _OWNED[f]
    return bool(gone)


@atexit.register
def _remove_owned() -> None:
    for f, pid in list(_OWNED.items()):
        if pid == os.getpid():  # never from a forked child that inherited the table
            f.unlink(missing_ok=True)
    _OWNED.clear()


def default_cache_dir(data_cfg: DataConfig) -> Path:
    return Path(data_cfg.image_dir).resolve().parent / ".comp_cache"


def writable(folder: str | Path) -> bool:
    """Whether ``folder`` (or, while it does not exist, its nearest existing parent) may be written to.

    A read-only mount (``/kaggle/input``) says no through ``statvfs`` and ``access``. A folder whose mode
    lets nobody write counts as read-only too, even for root, who could write anyway: someone made it so.
    """
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        ro_mount = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
        no_bits = not stat.S_IMODE(p.stat().st_mode) & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    except OSError:
        return False
    return p.is_dir() and not ro_mount and not no_bits and os.access(p, os.W_OK | os.X_OK)


_TOLD: set[tuple[Path, Path]] = set()  # (default, fallback) pairs already logged by this process


def disk_cache_dir(data_cfg: DataConfig, run_dir: str | Path | None = None) -> Path:
    """Where ``data.cache=disk`` keeps its slabs: ``data.cache_dir`` when set (it must be writable), else beside
    the images, else -- when that folder is read-only -- ``$TMPDIR/comp-cache``, else ``<run_dir>/cache``.

    $TMPDIR comes before the run folder: like the default it is shared by every run and tuning trial, and
    on Kaggle it keeps the slab out of /kaggle/working, whose files become the notebook's saved output.
    """
    if data_cfg.cache_dir:
        folder = Path(data_cfg.cache_dir)
        if not writable(folder):
            raise ConfigError(
                f"data.cache_dir {folder} is not writable; point it at a writable folder, or remove it "
                "(the default falls back to a writable place when the images are read-only)"
            )
        return folder
    default = default_cache_dir(data_cfg)
    if writable(default):
        return default
    candidates = [Path(tempfile.gettempdir()) / "comp-cache"] + ([RunDir(run_dir).cache] if run_dir else [])
    for folder in candidates:
        if writable(folder):
            if (default, folder) not in _TOLD:
                _TOLD.add((default, folder))
                log.warning(
                    "data.cache=disk: %s is read-only; caching decoded images in %s instead "
                    "(set data.cache_dir to choose)",
                    default.parent,
                    folder,
                )
            return folder
    raise CompError(
        f"data.cache=disk: {default.parent} is read-only and neither "
        f"{' nor '.join(map(str, candidates))} is writable; set data.cache_dir to a writable folder "
        "or use data.cache=memory"
    )


def make_reader(data_cfg: DataConfig, hw, paths=(), run_dir: str | Path | None = None):
    """The reader for ``data.cache`` ('memory' or 'disk') over ``paths``; 'none' decodes and resizes every call.

    ``run_dir``: the run folder, the disk cache's last resort when the images and $TMPDIR are read-only.
    """
    mode = data_cfg.cache
    if mode not in MODES:
        raise CompError(f"config key 'data.cache' must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none" or len(paths) == 0:
        return ResizeReader(hw)
    key = slab_key(paths, hw)
    name = f"{int(hw[0])}x{int(hw[1])}-{key}.u8"
    if mode == "memory":
        folder = _shm_dir()
        _remove_stale_memory_slabs(folder)
        return SlabReader(folder / f"comp-slab-{os.getpid()}-{name}", paths, hw, mode)
    return SlabReader(disk_cache_dir(data_cfg, run_dir) / name, paths, hw, mode)
