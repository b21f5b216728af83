"""What a path is before comp reads or writes it: a regular file or something else, a writable place or a full one.

Every reader of an image, a CSV or a config asks :func:`file_problem` first, so a FIFO (which blocks a reader
forever), a device (``/dev/zero`` never ends) or a socket is refused for what it is instead of being read or
reported "not found". Every writer's failure goes through :func:`write_error`, so a full disk, a quota, a
read-only or unwritable folder is one line naming the path and the free space, and :func:`file_mode` gives
the files comp writes the permissions the user's umask asks for.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from comp.errors import CompError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a file, as the end of a sentence ("not found", "is a folder", "is not a
    regular file (a FIFO)"), or None for a regular file (symlinks followed). Costs one ``stat``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else "not found"
    except NotADirectoryError:
        return "not found (a part of the path is a file)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"is not a regular file ({kind})"


def human_bytes(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing folder), None when unknown."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


# torch.save (PyTorchStreamWriter) reports a failed write as a RuntimeError, not an OSError
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_WHY = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file is too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent is a file, not a folder",
    errno.EISDIR: "it is a folder",
}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_error(path: str | Path, exc: BaseException) -> CompError | None:
    """The one-line CompError for a write of ``path`` that failed because of the machine (full disk, quota,
    read-only or unwritable folder), or None when ``exc`` is something else (a bug keeps its traceback)."""
    if isinstance(exc, CompError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _WHY:
        code = exc.errno
    elif isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_FAILED):
        code = errno.ENOSPC  # torch says only that the bytes did not land; a full disk is the usual cause
    else:
        return None
    why = _WHY[code]
    if code in _FULL:
        free = free_bytes(path)
        where = f"{human_bytes(free)} free" if free is not None else "free space unknown"
        if isinstance(exc, RuntimeError) and free is not None and free > 64 << 20:
            why = "the write stopped part-way"
        return CompError(
            f"cannot write {path} ({why}; {where} in {Path(os.path.abspath(path)).parent}); "
            "free some space or choose another location"
        )
    return CompError(f"cannot write {path} ({why}); choose a writable location")


def umask() -> int:
    """The process's umask, read without changing it (``os.umask`` sets it, racing other threads' writes)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """The mode a plain new file gets under the umask (0o644 under 022): what ``open(path, "w")`` would give.
    ``tempfile.mkstemp`` makes 0600 files, which another user of a shared run folder could not read."""
    return 0o666 & ~umask()
