"""Exceptions with messages a user can act on: which file, what is wrong, what to do."""

from __future__ import annotations

from pathlib import Path

__all__ = ["KidneySSLError", "DataError", "CheckpointError", "RunFolderError"]


class KidneySSLError(Exception):
    """Base class: the CLI prints these as one clean line (no traceback) and exits with status 2."""


class DataError(KidneySSLError):
    """A dataset file is missing, unreadable or inconsistent.

    The message starts with the file's absolute path.

    Attributes:
        path: the offending file (as given).
        field: what was checked (``imaging``, ``shape``, ``affine``, ``labels``, ...).
        expected, found: short descriptions of what was expected and what was found.
    """

    def __init__(self, path: str | Path, field: str, expected: str, found: str, hint: str = ""):
        self.path = Path(path)
        self.field = field
        self.expected = expected
        self.found = found
        self.hint = hint
        msg = f"{self.path.absolute()}: {field}: expected {expected}, found {found}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class CheckpointError(KidneySSLError):
    """A checkpoint is missing, from another version/architecture, or does not match the data."""


class RunFolderError(KidneySSLError):
    """An output folder holds another run, or a run folder to resume is incomplete."""
