"""Progress bars on stderr (tqdm), silenced by ``--quiet`` and on non-zero distributed ranks, and how
durations and clock times are shown."""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime, timedelta
from typing import Iterable, Iterator, TypeVar

__all__ = ["progress", "progress_enabled", "format_duration", "format_clock"]

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


def format_duration(seconds: float | None) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``, ``"2 d 5 h"``; ``"unknown"`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    days, rest = divmod(seconds, 86400)
    return f"{days:.0f} d {rest / 3600:.0f} h"


def format_clock(seconds_from_now: float, now: datetime | None = None) -> str:
    """Local clock time ``seconds_from_now`` ahead, with the date when it is not today."""
    now = now or datetime.now().astimezone()
    when = now + timedelta(seconds=float(seconds_from_now))
    return when.strftime("%H:%M %Z" if when.date() == now.date() else "%Y-%m-%d %H:%M %Z").strip()
