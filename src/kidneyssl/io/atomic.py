"""Atomic file writes: write to a temporary file in the same folder, then rename.

A run killed mid-write leaves either the old file or the new one, never half of one.

The temporary file lives in a hidden folder beside the target, ``.<name>.<random>.kstmp/<name>``:
writers that look at the file name (nibabel, ``np.save``, matplotlib) see the target's own name,
while nothing in the target's folder ends in ``.nii.gz``/``.npy``/``.json``, so a folder scan never
mistakes a leftover for an input. A SIGKILL can leave such a folder behind; the commands that write
a folder remove stale ones of this pattern when they start
(:func:`kidneyssl.io.paths.remove_stale_temp_files`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "atomic_save"]


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path for ``target``; on success rename it onto ``target``.

    The temporary path has ``target``'s own file name (plus ``suffix`` when the name does not
    already end with it), inside a hidden ``.<name>.<random>.kstmp`` folder beside ``target``, so
    writers that look at extensions (``.nii.gz``, ``.npy``) work unchanged. On error the
    temporary folder is removed and ``target`` is untouched.
    """
    from kidneyssl.io.paths import TEMP_MARKER

    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_MARKER, dir=target.parent))
    except OSError as err:
        _reraise_about(err, target)
    name = target.name if not suffix or target.name.endswith(suffix) else target.name + suffix
    tmp_path = tmp_dir / name
    try:
        # Create the file with the usual permissions (0666 less the umask), as open() would.
        tmp_path.touch()
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as err:
        _reraise_about(err, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _reraise_about(err: OSError, target: Path) -> NoReturn:
    """Raise ``err`` naming ``target`` (a write error such as a full disk often names no file, or
    our hidden temporary one): the message then says which file, and so which folder."""
    from kidneyssl.io.paths import TEMP_MARKER

    name = os.fsdecode(err.filename) if getattr(err, "filename", None) else ""
    if name and TEMP_MARKER not in name:
        raise err
    raise OSError(err.errno, err.strerror or str(err) or type(err).__name__, str(target.absolute())) from err


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_save(target: str | Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Call ``writer(tmp_path)`` and rename the result onto ``target``."""
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)
