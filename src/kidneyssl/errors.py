"""Exceptions with messages a user can act on: which file, what is wrong, what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["KidneySSLError", "DataError", "CheckpointError", "RunFolderError", "REMEDIES"]

#: What an error's ``remedy`` may name: the library options (keyword arguments, and ``prepare``
#: for the preparing step) that resolve it, with what each does. ``name=value`` names a value too
#: (``data_format=kits23``). The library says what to do in words and never names a command-line
#: flag; the CLI adds its flag for each remedy (``kidneyssl.cli._common.describe_error``).
REMEDIES = {
    "force": "start over / replace what is there",
    "resume": "continue the interrupted run",
    "extend_epochs": "continue a finished run with more epochs",
    "out": "choose another output folder",
    "cache": "give the prepared cache",
    "device": "choose another device",
    "prepare": "prepare the dataset into a cache",
    "prepare_force": "prepare the cache again, replacing it",
    "data_format": "read the dataset in another format",
    "kidney_labels": "say which label values form the kidney target",
    "labels": "map a mask file's values to kidney/background",
    "assume_yes": "start a long run without asking",
    "max_hours": "raise the time limit of a run",
    "allow_world_size_change": "resume on another number of processes anyway",
}


class KidneySSLError(Exception):
    """Base class: the CLI prints these as one clean line (no traceback) and exits with status 2.

    Attributes:
        remedy: the options that resolve the error (keys of :data:`REMEDIES`, optionally
            ``key=value``); the message says the same in words.
    """

    def __init__(self, *args: object, remedy: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.remedy = tuple(remedy)


class DataError(KidneySSLError):
    """A dataset file is missing, unreadable or inconsistent.

    The message starts with the file's absolute path.

    Attributes:
        path: the offending file (as given).
        field: what was checked (``imaging``, ``shape``, ``affine``, ``labels``, ...).
        expected, found: short descriptions of what was expected and what was found.
    """

    def __init__(self, path: str | Path, field: str, expected: str, found: str, hint: str = "",
                 remedy: Sequence[str] = ()):
        self.path = Path(path)
        self.field = field
        self.expected = expected
        self.found = found
        self.hint = hint
        msg = f"{self.path.absolute()}: {field}: expected {expected}, found {found}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg, remedy=remedy)


class CheckpointError(KidneySSLError):
    """A checkpoint is missing, from another version/architecture, or does not match the data."""


class RunFolderError(KidneySSLError):
    """An output folder holds another run, or a run folder to resume is incomplete."""
