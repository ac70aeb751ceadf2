"""Scans without masks as extra proxy-task cases (``pretrain --unlabeled``).

A ``kidneyssl locate`` output (``images/``, ``labels/``, ``locate.json``) is filtered and prepared
into a cache with the run's preprocessing:

* a scan is used when its located mask has a kidney and its confidence (mean kidney probability
  inside the mask) is at least ``pretrain.unlabeled_min_confidence``, and when preparing it finds
  a kidney on at least one side of the body (the cache's ``meta["kidneys"]``, as for annotated
  cases);
* the locator's ``touched_cases`` (recorded by ``locate`` from its checkpoint) must not include a
  validation or test case of the split the pretraining serves
  (:func:`kidneyssl.training.split.check_touched_cases`), and they are added to the pretraining
  run's own ``touched_cases``: pseudo-labels carry the labels their locator learned from.

The report says how many scans were located, kept, and how many kidneys of each side were found.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kidneyssl.config import PreprocessConfig
from kidneyssl.data.cache import Cache
from kidneyssl.errors import DataError
from kidneyssl.unlabeled.locate import LOCATE_JSON

__all__ = ["UNLABELED_PREFIX", "LocatedSet", "read_locate_json", "filter_located", "prepare_located",
           "open_located"]

log = logging.getLogger(__name__)

#: Case ids of located scans in a pretraining run carry this prefix, so they never collide with
#: (or are mistaken for) the annotated cases of the split.
UNLABELED_PREFIX = "unlabeled/"


@dataclass(frozen=True)
class LocatedSet:
    """Located scans ready for the proxy task.

    Attributes:
        cache: the prepared cache of the kept scans (:class:`~kidneyssl.data.cache.Cache`).
        case_ids: the kept scans' ids in ``cache`` (each has at least one located kidney).
        locator: the locator checkpoint recorded in ``locate.json`` (``None`` if not recorded).
        touched_cases: the annotated cases the locator was trained on (``None``: not recorded).
        report: counts for the run's ``run.json`` and log (see :func:`prepare_located`).
    """

    cache: Cache
    case_ids: tuple[str, ...]
    locator: str | None
    touched_cases: tuple[str, ...] | None
    report: dict[str, Any]

    @property
    def prefixed_ids(self) -> list[str]:
        """``case_ids`` as a :class:`~kidneyssl.data.cache.CacheUnion` under ``UNLABELED_PREFIX`` names them."""
        return [UNLABELED_PREFIX + c for c in self.case_ids]


def read_locate_json(located_dir: str | Path) -> dict[str, Any]:
    """The ``locate.json`` of a ``kidneyssl locate`` output folder.

    Raises:
        DataError: the folder has no readable ``locate.json`` with a ``cases`` mapping, or it
            says ``running`` (a locate still running or killed: its cases are incomplete).
    """
    path = Path(located_dir) / LOCATE_JSON
    if not path.is_file():
        raise DataError(path, "locate.json", "the output of kidneyssl locate (images/, labels/, locate.json)",
                        "no locate.json", hint="locate the scans first, or give a locator model to locate them")
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise DataError(path, "locate.json", "valid JSON", str(err)) from None
    if not isinstance(info, dict) or not isinstance(info.get("cases"), dict):
        raise DataError(path, "locate.json", "a 'cases' mapping", type(info.get("cases")).__name__
                        if isinstance(info, dict) else type(info).__name__)
    if info.get("status") == "running":
        raise DataError(path, "locate.json", "a finished locate", "one that is running or was interrupted",
                        hint="run the same locate again to finish it")
    return info


def filter_located(cases: dict[str, dict[str, Any]], min_confidence: float) -> tuple[list[str], list[str], list[str]]:
    """(kept, without kidney, below confidence) case ids of a ``locate.json``'s ``cases``."""
    no_kidney = sorted(c for c, r in cases.items() if int(r.get("kidney_voxels", 0)) <= 0)
    low = sorted(c for c, r in cases.items()
                 if int(r.get("kidney_voxels", 0)) > 0 and float(r.get("confidence", 0.0)) < min_confidence)
    return sorted(set(cases) - set(no_kidney) - set(low)), no_kidney, low


def prepare_located(located_dir: str | Path, cache_dir: str | Path, cfg: PreprocessConfig,
                    min_confidence: float, workers: int = 1) -> LocatedSet:
    """Filter a ``locate`` output by confidence and prepare the kept scans into ``cache_dir``.

    Preparing is resumable like ``prepare`` (cases already prepared with the same config and files
    are skipped). The located masks are 0/1, so the kidney target is label 1.

    Returns:
        :func:`open_located` of the result.

    Raises:
        DataError: no ``locate.json``, or no scan passes the filter.
    """
    from kidneyssl.data.prepare import prepare_dataset

    located_dir = Path(located_dir)
    info = read_locate_json(located_dir)
    keep, no_kidney, low = filter_located(info["cases"], min_confidence)
    if not keep:
        raise DataError(located_dir / LOCATE_JSON, "confidence",
                        f"at least one scan with a located kidney and confidence >= {min_confidence:g}",
                        f"none of {len(info['cases'])} ({len(no_kidney)} without kidney, {len(low)} below)",
                        hint="lower the minimum confidence or locate with a better model")
    prepare_dataset(located_dir, cache_dir, cfg, workers=workers, case_ids=keep, data_format="pairs",
                    kidney_labels=(1,))
    return open_located(located_dir, cache_dir, cfg, min_confidence)


def open_located(located_dir: str | Path, cache_dir: str | Path, cfg: PreprocessConfig,
                 min_confidence: float) -> LocatedSet:
    """The :class:`LocatedSet` of a located folder already prepared by :func:`prepare_located`.

    Its ``report`` has ``scans`` (in ``locate.json``), ``locate_failed``, ``no_kidney``,
    ``below_confidence``, ``not_prepared``, ``used``, ``kidneys`` (``right``/``left`` counts of the
    used scans), ``min_confidence`` and ``located_dir``.

    Raises:
        DataError: no ``locate.json``, or no kept scan has a kidney in the cache.
    """
    from kidneyssl.data.cache import open_cache

    located_dir = Path(located_dir)
    info = read_locate_json(located_dir)
    cases: dict[str, dict[str, Any]] = info["cases"]
    keep, no_kidney, low = filter_located(cases, min_confidence)
    cache = open_cache(cache_dir, expected=cfg)
    used, right, left = [], 0, 0
    for cid in keep:
        if cid not in cache:
            continue
        kidneys = cache.load(cid, mmap=True).meta.get("kidneys", {})
        if kidneys:
            used.append(cid)
            right += "right" in kidneys
            left += "left" in kidneys
    report: dict[str, Any] = {
        "located_dir": str(located_dir.resolve()), "min_confidence": float(min_confidence),
        "scans": len(cases) + len(info.get("failed", {})), "locate_failed": len(info.get("failed", {})),
        "no_kidney": len(no_kidney), "below_confidence": len(low),
        "not_prepared": sum(c not in cache for c in keep), "used": len(used),
        "kidneys": {"right": right, "left": left},
    }
    if not used:
        raise DataError(located_dir / LOCATE_JSON, "kidneys", "at least one kept scan with a kidney found "
                        "on one side of the body", f"none of {len(keep)}")
    touched = info.get("touched_cases")
    log.info("unlabeled scans: %d located, %d kept (confidence >= %g; %d without kidney, %d below), "
             "%d used: %d right and %d left kidneys found",
             report["scans"], len(keep), min_confidence, len(no_kidney), len(low), len(used), right, left)
    return LocatedSet(cache, tuple(used), info.get("model"),
                      None if touched is None else tuple(str(c) for c in touched), report)
