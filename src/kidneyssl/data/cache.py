"""The preprocessed, memory-mappable dataset cache: its layout and its reader. ``kidneyssl prepare``
writes it (:mod:`kidneyssl.data.prepare`).

Layout::

    CACHE/cache.json              {"format_version", "kidneyssl_version", "preprocess", "labels",
                                   "data_format", "cases", ...}
    CACHE/case_XXXXX/image.npy    float32 (Z, Y, X), preprocessed and padded (canonical I, P, L)
    CACHE/case_XXXXX/label.npy    uint8, same grid (absent for unannotated cases)
    CACHE/case_XXXXX/meta.json    {"case_id", "record", "split_x", "kidneys", "preprocess", ...}

Every file is written to a temporary name and renamed; ``meta.json`` is written last, so a case
counts as done only when all of its files are complete, and a killed run is simply re-run.
``cache.json`` is written at the end. A case is skipped when its ``meta.json`` records the same
preprocessing config, the same label policy (which labels form the kidney target, see
:mod:`kidneyssl.io.labels`) and the same input files (size and modification time). A cache
without a recorded policy (made before policies existed) used KiTS19's (kidney = label > 0).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kidneyssl.config import PreprocessConfig, config_from_dict, config_to_dict
from kidneyssl.errors import DataError, KidneySSLError
from kidneyssl.io.labels import KITS19_POLICY, LabelPolicy

__all__ = [
    "FORMAT_VERSION",
    "CachedCase",
    "Cache",
    "CacheUnion",
    "CaseSource",
    "open_cache",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_JSON = "cache.json"
META_JSON = "meta.json"
IMAGE_NPY = "image.npy"
LABEL_NPY = "label.npy"


@dataclass
class CachedCase:
    """One cached case: arrays (read-only memory maps by default) and its ``meta.json``."""

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict[str, Any]

    @property
    def record(self):
        """The :class:`~kidneyssl.preprocessing.pipeline.PreprocessRecord` (to restore outputs)."""
        from kidneyssl.preprocessing.pipeline import PreprocessRecord

        return PreprocessRecord.from_dict(self.meta["record"])


class CaseSource(Protocol):
    """What datasets read cases from: a :class:`Cache`, or a :class:`CacheUnion` of caches."""

    def load(self, case_id: str, mmap: bool = True, label: bool = True) -> CachedCase: ...

    def __contains__(self, case_id: object) -> bool: ...


class Cache:
    """A prepared cache folder (use :func:`open_cache`)."""

    def __init__(self, root: Path, info: dict[str, Any]) -> None:
        self.root = root
        self.info = info
        self.preprocess: PreprocessConfig = config_from_dict(PreprocessConfig, info["preprocess"],
                                                              "preprocess")
        self.case_ids: list[str] = [str(c) for c in info["cases"]]
        self.labels: LabelPolicy = LabelPolicy.from_dict(labels_of(info))

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self.case_ids

    def load(self, case_id: str, mmap: bool = True, label: bool = True) -> CachedCase:
        """Arrays and metadata of ``case_id`` (``mmap=True``: read-only memory maps).

        ``label=False`` leaves the label file alone (``label`` is then None whatever the case
        holds; ``meta["has_label"]`` still says whether it has one): what image-only methods
        read."""
        if case_id not in self.case_ids:
            raise KidneySSLError(f"{self.root}: case {case_id!r} is not in this cache")
        folder = self.root / case_id
        meta_path = folder / META_JSON
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(meta_path, "meta", "a readable meta.json", f"{type(err).__name__}",
                            hint="prepare the cache again", remedy=("prepare",)) from None
        mode = "r" if mmap else None
        image = _load_npy(folder / IMAGE_NPY, mode)
        label_array = _load_npy(folder / LABEL_NPY, mode) if label and meta.get("has_label") else None
        shape = tuple(meta["shape"])
        for name, arr in (("image", image), ("label", label_array)):
            if arr is not None and tuple(arr.shape) != shape:
                raise DataError(folder / f"{name}.npy", "shape", str(shape), str(tuple(arr.shape)),
                                hint="prepare the cache again", remedy=("prepare_force",))
        return CachedCase(case_id, image, label_array, meta)

    def __repr__(self) -> str:
        return f"Cache({self.root}, {len(self)} cases, spacing_mm={self.preprocess.spacing_mm})"


class CacheUnion:
    """A cache and extra caches read as one (e.g. the labeled cache and a cache of located scans
    for pretraining): a case id ``<prefix><id>`` is case ``id`` of the extra cache under
    ``prefix``; any other id is the base cache's. Only :meth:`load` and membership are offered,
    which is what the proxy-task pairs read.

    Raises:
        KidneySSLError: an extra cache was prepared with another preprocessing config.
    """

    def __init__(self, base: Cache, extra: dict[str, Cache]) -> None:
        for prefix, other in extra.items():
            if not prefix or other.preprocess != base.preprocess:
                raise KidneySSLError(f"{other.root}: prepared with another preprocessing config than "
                                     f"{base.root} (or an empty prefix {prefix!r}); both must match")
        self.base = base
        self.extra = dict(extra)
        self.preprocess = base.preprocess

    def _route(self, case_id: str) -> tuple[Cache, str]:
        for prefix, other in self.extra.items():
            if case_id.startswith(prefix):
                return other, case_id[len(prefix):]
        return self.base, case_id

    def __contains__(self, case_id: object) -> bool:
        if not isinstance(case_id, str):
            return False
        cache, inner = self._route(case_id)
        return inner in cache

    def load(self, case_id: str, mmap: bool = True, label: bool = True) -> CachedCase:
        """As :meth:`Cache.load`; the returned case keeps the id it has in its own cache."""
        cache, inner = self._route(case_id)
        return cache.load(inner, mmap=mmap, label=label)


def _load_npy(path: Path, mode: str | None) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mode)  # type: ignore[arg-type]
    except (OSError, ValueError) as err:
        raise DataError(path, "array", "a readable .npy file", type(err).__name__,
                        hint="prepare the cache again", remedy=("prepare",)) from None


def config_diff(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    keys = sorted(set(found) | set(expected))
    return [f"{k}: cache {found.get(k)!r} vs expected {expected.get(k)!r}"
            for k in keys if found.get(k) != expected.get(k)]


def labels_of(info: dict[str, Any]) -> dict[str, Any]:
    """The label policy recorded in a cache.json / meta.json (KiTS19's for older caches)."""
    return info.get("labels") or KITS19_POLICY.to_dict()


def open_cache(cache_dir: str | Path, expected: PreprocessConfig | None = None,
               labels: LabelPolicy | None = None) -> Cache:
    """Open a cache made by :func:`prepare_dataset`.

    Raises:
        KidneySSLError: no ``cache.json``, another format version, or (with ``expected`` /
            ``labels``) the cache was prepared with another preprocessing config or label
            policy; the message names the keys.
    """
    root = Path(cache_dir)
    path = root / CACHE_JSON
    if not path.is_file():
        raise DataError(path, "cache", "a kidneyssl cache (cache.json)", "missing",
                        hint="prepare the dataset first", remedy=("prepare",))
    try:
        info = json.loads(path.read_text())
    except ValueError as err:
        raise DataError(path, "cache", "valid JSON", f"{err}") from None
    if info.get("format_version") != FORMAT_VERSION:
        raise DataError(path, "format_version", str(FORMAT_VERSION), str(info.get("format_version")),
                        hint="prepare the cache again", remedy=("prepare_force",))
    if expected is not None:
        diff = config_diff(info.get("preprocess", {}), config_to_dict(expected))
        if diff:
            raise KidneySSLError(
                f"{root}: cache was prepared with another preprocessing config ("
                + "; ".join(diff) + "); prepare it with this config or use a matching cache",
                remedy=("prepare",))
    if labels is not None:
        diff = config_diff(labels_of(info), labels.to_dict())
        if diff:
            raise KidneySSLError(
                f"{root}: cache was prepared with another label policy ("
                + "; ".join(diff) + "); prepare it with these kidney labels or use a matching "
                "cache", remedy=("prepare", "kidney_labels"))
    return Cache(root, info)
