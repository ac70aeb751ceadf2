"""Progress bars on stderr (tqdm), silenced by ``--quiet`` and on non-zero distributed ranks."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress", "progress_enabled"]

T = TypeVar("T")


def progress_enabled() -> bool:
    """True unless logging is quieter than INFO (``--quiet``) or this is not rank 0."""
    if int(os.environ.get("RANK", "0")) != 0:
        return False
    if os.environ.get("KIDNEYSSL_NO_PROGRESS"):
        return False
    return logging.getLogger("kidneyssl").getEffectiveLevel() <= logging.INFO


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it",
             leave: bool = True) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr when progress is enabled, else return it as is."""
    if not progress_enabled():
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True))
