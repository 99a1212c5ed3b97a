"""Atomic writes (a file or folder appears complete or not at all: temp + rename) and run folders.

:func:`claim_run_folder` is the one rule every command that writes a run folder follows: an
earlier run in ``--out`` is never replaced by accident.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path


def _fsync(path: str | Path) -> None:
    """Flush a file or a folder to disk (open read-only, fsync, close)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened or flushed)."""
    try:
        _fsync(folder)
    except OSError:
        pass


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path`` holds the old text or the new, never a part, also after a crash or power loss: the new
    text is written to a temporary file and flushed to disk (fsync) before it is renamed over
    ``path``, and the rename is flushed too (fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder; on success it replaces ``path``.

    Its files are flushed to disk before the swap. A folder already at ``path`` is exchanged with
    the new one in one step (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader finds the old
    folder or the new one at every moment, never none; where the exchange is not supported (other
    systems, some file systems) the old folder is moved aside first, leaving a moment of a few
    microseconds without ``path``. On error the temporary folder is removed and any previous
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for folder, _dirs, files in os.walk(tmp):
        for name in files:
            _fsync(os.path.join(folder, name))
        fsync_dir(folder)
    if path.exists() and exchange_paths(tmp, path):  # tmp now holds the old folder
        fsync_dir(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Returns false, having changed nothing, where the system or the file system cannot.
    """
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def claim_run_folder(out: str | Path, overwrite: bool = False, resume: bool = False,
                     resume_flag: str | None = None) -> None:
    """Refuse to write a new run into ``out`` when it already holds one (``ValueError``, nothing written).

    ``out`` may be missing or empty; otherwise the run only goes ahead when it continues the
    earlier one (``resume``) or the user said ``--overwrite true``. ``resume_flag``: how this
    command continues a run, for the message (``None``: it cannot).
    """
    out = Path(out)
    if resume or not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    files = [p for p in out.rglob("*") if p.is_file()]
    if not held or [p.relative_to(out) for p in files] in ([], [Path("config.yaml")]):
        return  # nothing, or only the settings of a command that failed before doing any work
    if overwrite:
        logging.getLogger(__name__).warning("--overwrite true: writing a new run over the earlier one in %s", out)
        return
    shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
    ways = (f"continue it with {resume_flag}, " if resume_flag else "") + "choose another --out, or replace it " \
        "with --overwrite true"
    raise ValueError(f"{out} already holds a run ({shown}); refusing to overwrite it: {ways}")


def remove_if_empty(folder: str | Path) -> bool:
    """Remove ``folder`` when it holds no file at all (only empty sub-folders); whether it did."""
    folder = Path(folder)
    if not folder.is_dir() or any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
