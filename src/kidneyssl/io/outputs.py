"""Outputs never destroy inputs: the one check every writing command runs before any work.

A command names what it will write (files, and folders it fills: a cache, a run folder) and what
it reads (files and folders). :func:`check_outputs` refuses

- an output that **is** an input, **contains** one (a folder holding it) or **lies inside** an
  input folder, after resolving symbolic links; ``force`` never overrides this;
- an existing file at an output path that the command did not write itself (``is_own`` says
  which are its own, e.g. a CSV with its header, or a file recorded in its ``locate.json``),
  unless ``force``.

An output *file* that is a symbolic link is compared as the link itself (replacing a link, as
every atomic write does, leaves its target alone); an output *folder* is compared where it leads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from kidneyssl.errors import DataError

__all__ = ["check_outputs", "first_line_starts_with"]


def _as_written(path: Path) -> Path:
    """Where writing ``path`` lands: a folder where it leads, a file (or link) as itself."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return path.resolve()
    return path.parent.resolve() / path.name


def _as_read(path: Path) -> set[Path]:
    """An input as given (its folder resolved) and where it finally leads."""
    path = Path(os.path.abspath(path))
    return {path.parent.resolve() / path.name, path.resolve()}


def _relation(out: Path, inp: Path) -> str | None:
    if out == inp:
        return f"the input {inp}"
    if out in inp.parents:
        return f"a folder holding the input {inp}"
    if inp in out.parents:
        return f"a path inside the input folder {inp}"
    return None


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path | None], *,
                  is_own: Callable[[Path], bool] | None = None, force: bool = False,
                  what: str = "output", inputs_name: str = "the inputs") -> None:
    """Refuse outputs that would write over, into or around an input, and (without ``force``)
    existing files the command did not write.

    Args:
        outputs: paths the command creates or replaces (files, and folders it fills).
        inputs: paths it reads (files or folders); ``None`` entries are ignored.
        is_own: whether an existing file at an output path is one of the command's own outputs
            (then it may be replaced); ``None``: every existing file at an output path is (its
            names are the command's own, e.g. ``prediction_*.nii.gz``).
        force: replace existing files that are not the command's own (never an input).
        what: how the outputs are called in messages; ``inputs_name``: how the inputs are.

    Raises:
        DataError: naming the output and the input (or the existing file); nothing is written.
    """
    read: list[Path] = []
    for inp in inputs:
        if inp is not None:
            read.extend(_as_read(Path(inp)))
    for given in outputs:
        given = Path(given)
        out = _as_written(given)
        for inp in read:
            found = _relation(out, inp)
            if found is not None:
                raise DataError(given, what, f"a path outside {inputs_name} (not one, not inside one, "
                                "does not contain one)", found, hint="nothing is written over an input",
                                remedy=("out",))
        if force or is_own is None or given.is_dir():
            continue
        if (given.is_file() or given.is_symlink()) and not is_own(given):
            raise DataError(given, what, "a new file or one this command wrote before",
                            "an existing file it did not write", hint="replace it, or write elsewhere",
                            remedy=("force", "out"))


def first_line_starts_with(path: Path, *prefixes: str) -> bool:
    """Whether ``path``'s first line starts with one of ``prefixes`` (a blank file: True).

    For recognising a command's own text outputs (a CSV's header, a Markdown title).
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    if not head.strip():
        return True
    try:
        line = head.split(b"\n", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return line.startswith(prefixes)
