"""The user's cache folder for what inference measures or builds once per machine or checkpoint:
precision probes (``precision/*.json``) and OpenVINO exports (``openvino/<key>/model.xml``).

Location: ``$KIDNEYSSL_CACHE_DIR`` when set (tests point it at a temporary folder), else
``$XDG_CACHE_HOME/kidneyssl``, else ``~/.cache/kidneyssl``. Everything in it may be deleted at any
time; it is rebuilt when needed. Writes are atomic (a temporary sibling, then a rename), so two
processes filling the same entry leave one complete copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["CACHE_ENV", "cache_dir", "read_json", "write_json", "write_bytes", "publish_folder", "prune"]

#: Environment variable naming the cache folder.
CACHE_ENV = "KIDNEYSSL_CACHE_DIR"


def cache_dir(sub: str = "") -> Path:
    """The cache folder (see the module docstring), or its sub-folder ``sub``; not created here."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str(Path(xdg) / "kidneyssl") if xdg else str(Path.home() / ".cache" / "kidneyssl")
    return Path(root) / sub if sub else Path(root)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is missing or unreadable (a cache miss)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically; a cache that cannot be written is only a lost
    shortcut, so ``OSError`` is swallowed."""
    write_bytes(path, json.dumps(data, indent=2).encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary sibling whose name starts with ``.``,
    which :func:`prune` skips, then a rename); ``OSError`` is swallowed, as in :func:`write_json`."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def publish_folder(target: Path, fill: Callable[[Path], object]) -> Path:
    """Make the folder ``target`` by ``fill(tmp)`` in a temporary sibling, renamed onto
    ``target`` when complete. If another process published ``target`` first, its copy is kept
    and ours is discarded. Returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prune(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used entries (by modification time) of
    ``folder``, skipping temporary ones being written."""
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError:
        return
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
