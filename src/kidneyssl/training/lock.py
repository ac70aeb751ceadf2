"""One trainer per run folder: ``RUN/run.lock`` names the process that writes the folder.

The lock file is created exclusively (``O_CREAT | O_EXCL``) and holds the owner's PID, host, start
time and, on Linux, the process's kernel start time (so a PID reused by another process is not
mistaken for the owner). A second trainer in the same folder is refused, whatever its options
(``force`` included): two writers would interleave checkpoints and logs. A lock whose owner has
ended on this host (a killed run) is stale and taken over, with a message; a lock from another host
cannot be checked and is refused, saying which file to remove if that process has ended.

Usage (rank 0, around the whole fit)::

    with RunLock(run_dir):
        ...  # train; the lock is released however the block ends
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from kidneyssl.errors import RunFolderError

__all__ = ["LOCK_NAME", "RunLock", "lock_owner"]

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc/PID/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, proc_start: str | None) -> bool:
    """Whether ``pid`` on this host is still the process that wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    except OSError:
        return False
    now = _process_start(pid)
    return proc_start is None or now is None or now == proc_start


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_owner(folder: str | Path) -> dict[str, Any] | None:
    """The lock of ``folder`` (``pid``, ``host``, ``started``, ...) when a live process other than
    this one holds it; ``None`` when there is none, it is ours, or its owner has ended."""
    owner = _read(Path(folder) / LOCK_NAME)
    if owner is None:
        return None
    if owner.get("host") != socket.gethostname():
        return owner
    pid = int(owner.get("pid", -1))
    if pid == os.getpid() or not _alive(pid, owner.get("proc_start")):
        return None
    return owner


class RunLock:
    """An exclusive lock on a run folder (see the module docstring); a context manager.

    Args:
        folder: the run folder (created if needed, so that the lock can be taken first).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_NAME
        self.acquired = False

    def _describe(self, owner: dict[str, Any]) -> str:
        return (f"PID {owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}"
                + (", this process" if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
                   else ""))

    def _stale(self, owner: dict[str, Any]) -> bool:
        if not owner:  # unreadable even after a moment: not a lock anyone is writing
            return True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            pid = int(owner["pid"])
        except (KeyError, TypeError, ValueError):
            return True  # not a lock this module wrote whole
        return not _alive(pid, owner.get("proc_start"))

    def _take_over(self, owner: dict[str, Any]) -> None:
        """Move the stale lock aside atomically (only one taker wins); put back a live one that
        replaced it meanwhile."""
        aside = self.folder / f".{LOCK_NAME}.{os.getpid()}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = _read(aside)
        if moved is not None and (moved.get("pid"), moved.get("started")) != (owner.get("pid"), owner.get("started")):
            try:
                os.link(aside, self.path)  # not the stale lock we read: give it back
            except OSError:
                pass
        else:
            log.warning("%s: taking over the lock of %s, which has ended (a killed run)", self.folder,
                        self._describe(owner))
        aside.unlink(missing_ok=True)

    def acquire(self) -> "RunLock":
        """Take the lock.

        Raises:
            RunFolderError: another live process holds it (or one on another host), naming it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "proc_start": _process_start(os.getpid())}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read(self.path)
                if owner is None:  # being written this instant, or not ours: look again shortly
                    time.sleep(0.05)
                    owner = _read(self.path) or {}
                if self._stale(owner):
                    self._take_over(owner)
                    continue
                other_host = owner.get("host") != socket.gethostname()
                raise RunFolderError(
                    f"{self.folder}: another process is training in this folder ({self._describe(owner)}); "
                    "wait for it to end or stop it, or choose another output folder"
                    + (f" (if that process has ended, remove {self.path})" if other_host else ""),
                    remedy=("out",)) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            self.acquired = True
            return self
        raise RunFolderError(f"{self.folder}: could not take the lock {self.path} (it keeps changing hands)",
                             remedy=("out",))

    def release(self) -> None:
        """Remove the lock if this process holds it (a no-op otherwise)."""
        if not self.acquired:
            return
        self.acquired = False
        owner = _read(self.path)
        if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
