"""Paths in messages: absolute, and for a missing file, what its folder holds instead.

Also the one home of output-folder checks every writing command runs before any work
(:func:`check_output_folder`) and of the temporary-file naming that :mod:`kidneyssl.io.atomic`
uses (:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from kidneyssl.errors import DataError

__all__ = ["describe_folder", "describe_missing", "describe_os_error", "check_output_folder", "TEMP_MARKER",
           "is_temp_name", "remove_stale_temp_files"]

log = logging.getLogger(__name__)

#: Temporary folders of atomic writes are named ``.<target name>.<random>.kstmp``: hidden, and
#: never ending in a suffix a folder scan looks for (``.nii.gz``, ``.npy``, ``.json``, ``.pt``).
TEMP_MARKER = ".kstmp"
_TEMP_DIR_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.kstmp$")
#: Before, temporary *files* were named ``.<target name>.<random>.tmp<suffix>``.
_OLD_TEMP_FILE_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)*$")
_SHOWN = 8


def describe_folder(folder: str | Path) -> str:
    """What ``folder`` holds (first few entries, hidden ones left out), for messages."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        return f"{folder} does not exist"
    try:
        entries = sorted(e.name + ("/" if e.is_dir() else "") for e in folder.iterdir()
                         if not e.name.startswith("."))
    except OSError as err:
        return f"folder {folder} is not readable ({err.strerror})"
    if not entries:
        return f"{folder} is empty"
    shown = ", ".join(entries[:_SHOWN]) + (f", ... ({len(entries)} entries)" if len(entries) > _SHOWN else "")
    return f"{folder} holds: {shown}"


def describe_missing(path: str | Path) -> str:
    """What the nearest existing folder above ``path`` holds, for a "not found" message.

    >>> describe_missing("/no/such/dir/file.pt")  # doctest: +SKIP
    'folder /no does not exist; / holds: bin/, etc/, ...'
    """
    path = Path(path).absolute()
    folder = path.parent
    missing_parent = None
    while not folder.is_dir() and folder != folder.parent:
        missing_parent = folder
        folder = folder.parent
    prefix = f"folder {missing_parent} does not exist; " if missing_parent is not None else ""
    return prefix + describe_folder(folder)


def describe_os_error(err: OSError) -> str:
    """One line for an operating-system error: the file (absolute), what went wrong, and for a
    full disk or quota, the folder to free space in.

    >>> describe_os_error(OSError(28, "No space left on device", "/data/out/a.nii.gz"))
    '/data/out/a.nii.gz: No space left on device (free space in /data/out or write elsewhere)'
    """
    import errno

    what = err.strerror or str(err)
    if not getattr(err, "filename", None):
        return what
    path = Path(os.fsdecode(err.filename)).absolute()
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what += f" (free space in {path.parent} or write elsewhere)"
    return f"{path}: {what}"


def check_output_folder(out: str | Path, what: str = "output folder") -> Path:
    """Make sure ``out`` is a writable folder, or can be created as one, before any work is done.

    Nothing is created: an existing folder is probed with a temporary file (removed at once),
    a folder still to be created is checked against its nearest existing parent.

    Returns:
        the absolute path of ``out``.

    Raises:
        DataError: ``out`` is an existing file, lies below a file, or is not writable; the
            message gives the absolute path.
    """
    out = Path(out).absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DataError(out, what, "a folder", "an existing file" if out.is_file()
                            else "something that is not a folder", hint="choose a folder", remedy=("out",))
        probe = out / f".write-test.{os.getpid():08d}{TEMP_MARKER}"
        try:
            probe.mkdir()
        except OSError as err:
            raise DataError(out, what, "a writable folder", err.strerror or "not writable",
                            hint="check its permissions or choose another folder", remedy=("out",)) from None
        probe.rmdir()
        return out
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(out, what, "a folder", f"a path below the file {parent}", remedy=("out",))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(out, what, "a folder that can be created", f"{parent} is not writable",
                        remedy=("out",))
    return out


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temporary names: an atomic write's ``.<name>.<random>.kstmp``
    folder, or an older version's ``.<name>.<random>.tmp<suffix>`` file."""
    return bool(_TEMP_DIR_RE.match(name) or _OLD_TEMP_FILE_RE.match(name))


def remove_stale_temp_files(folder: str | Path, min_age_s: float = 0.0) -> list[Path]:
    """Remove what killed runs left of atomic writes in ``folder`` (our naming pattern only; the
    folder itself, not its subfolders). Entries younger than ``min_age_s`` seconds are left
    alone (a concurrent writer may own them).

    Returns:
        the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        name = entry.name
        if entry.is_symlink() or not is_temp_name(name):
            continue
        try:
            if min_age_s and now - entry.stat().st_mtime < min_age_s:
                continue
            if entry.is_dir() and _TEMP_DIR_RE.match(name):
                shutil.rmtree(entry)
            elif entry.is_file() and _OLD_TEMP_FILE_RE.match(name):
                entry.unlink()
            else:
                continue
        except OSError:
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), folder.absolute())
    return removed
