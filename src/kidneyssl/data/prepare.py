"""``kidneyssl prepare``: check, preprocess and write every case of a dataset into the cache
(:mod:`kidneyssl.data.cache` has the layout and the reader), in parallel worker processes,
resumable and atomic (see the cache module's docstring)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kidneyssl.config import PreprocessConfig, config_from_dict, config_to_dict
from kidneyssl.data.cache import CACHE_JSON, FORMAT_VERSION, IMAGE_NPY, LABEL_NPY, META_JSON, config_diff, labels_of
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.atomic import atomic_path, atomic_write_json
from kidneyssl.io.datasets import open_dataset
from kidneyssl.io.kits19 import Case, load_case
from kidneyssl.io.labels import KITS19_POLICY, LabelPolicy
from kidneyssl.io.outputs import check_outputs
from kidneyssl.io.paths import check_output_folder, remove_stale_temp_files
from kidneyssl.progress import progress
from kidneyssl.system import available_cpus

__all__ = ["PrepareSummary", "prepare_dataset", "prepare_cases", "prepare_case"]

log = logging.getLogger(__name__)


@dataclass
class PrepareSummary:
    """Outcome of :func:`prepare_dataset`: prepared, skipped (already done) and failed cases."""

    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    #: remedies the failures name (:data:`kidneyssl.errors.REMEDIES`), e.g. ``data_format=kits23``
    remedy: set[str] = field(default_factory=set)

    @property
    def cases(self) -> list[str]:
        """Cases usable from the cache (prepared now or before)."""
        return sorted(self.ok + self.skipped)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": sorted(self.ok), "skipped": sorted(self.skipped),
                "failed": dict(sorted(self.failed.items())), "seconds": round(self.seconds, 2)}

    def __str__(self) -> str:
        return (f"{len(self.ok)} prepared, {len(self.skipped)} skipped (already done), "
                f"{len(self.failed)} failed in {self.seconds:.1f} s")


def _fingerprint(case: Case) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, path in (("imaging", case.imaging), ("segmentation", case.segmentation)):
        if path is not None:
            st = path.stat()
            out[key] = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _is_done(case: Case, folder: Path, cfg_dict: dict[str, Any], labels_dict: dict[str, Any]) -> bool:
    try:
        meta = json.loads((folder / META_JSON).read_text())
    except (OSError, ValueError):
        return False
    if meta.get("format_version") != FORMAT_VERSION or meta.get("preprocess") != cfg_dict:
        return False
    if labels_of(meta) != labels_dict:
        return False
    if meta.get("source") != _fingerprint(case):
        return False
    needed = [IMAGE_NPY] + ([LABEL_NPY] if meta.get("has_label") else [])
    return all((folder / name).is_file() for name in needed)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array))


def prepare_case(case: Case, cache_dir: str | Path, cfg_dict: dict[str, Any],
                 threads: int | None = None,
                 labels_dict: dict[str, Any] | None = None) -> tuple[str, str, list[str], list[str]]:
    """Check, preprocess and cache one case (the worker function; spawn-safe, picklable args).

    ``labels_dict`` is a :class:`~kidneyssl.io.labels.LabelPolicy` as a dict (default KiTS19's):
    it checks the label values and makes the kidney target.

    Returns:
        (case_id, status ``ok`` or ``failed``, reasons, the remedies the reasons name).
    """
    from kidneyssl.preprocessing.pipeline import preprocess_image, preprocess_label
    from kidneyssl.preprocessing.split_plane import find_split_x, locate_kidneys

    start = time.perf_counter()
    cfg = config_from_dict(PreprocessConfig, cfg_dict, "preprocess")
    policy = LabelPolicy.from_dict(labels_dict or KITS19_POLICY.to_dict())
    folder = Path(cache_dir) / case.case_id
    try:
        image, label, errors = load_case(case, policy=policy)
        if errors:
            return (case.case_id, "failed", [str(e) for e in errors],
                    sorted({r for e in errors for r in e.remedy}))
        assert image is not None
        array, record = preprocess_image(image, cfg, threads=threads)
        del image
        mask = (preprocess_label(label, record, cfg, threads=threads, policy=policy)
                if label is not None else None)
        del label
        split_x = find_split_x(mask, array)
        kidneys = locate_kidneys(mask, split_x) if mask is not None else {}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_JSON).unlink(missing_ok=True)  # the case is "not done" until meta is back
        _save_npy(folder / IMAGE_NPY, array)
        if mask is not None:
            _save_npy(folder / LABEL_NPY, mask)
        else:
            (folder / LABEL_NPY).unlink(missing_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "case_id": case.case_id,
            "record": record.to_dict(),
            "shape": list(array.shape),
            "has_label": mask is not None,
            "split_x": int(split_x),
            "kidneys": {side.value: loc.to_dict() for side, loc in kidneys.items()},
            "preprocess": cfg_dict,
            "labels": policy.to_dict(),
            "source": _fingerprint(case),
            "seconds": round(time.perf_counter() - start, 3),
        }
        atomic_write_json(folder / META_JSON, meta)
    except (KidneySSLError, ValueError, OSError, MemoryError) as err:
        return (case.case_id, "failed", [f"{case.case_id}: {type(err).__name__}: {err}"],
                list(getattr(err, "remedy", ())))
    return case.case_id, "ok", [], []


def prepare_dataset(data_dir: str | Path, cache_dir: str | Path, cfg: PreprocessConfig,
                    workers: int = 2, force: bool = False,
                    case_ids: list[str] | None = None, *, data_format: str | None = None,
                    kidney_labels: tuple[int, ...] | None = None) -> PrepareSummary:
    """Check and preprocess every case of a dataset (any format of :mod:`kidneyssl.io.datasets`)
    into ``cache_dir``.

    Cases run in ``workers`` spawned processes (``workers <= 1``: in this process) with a progress
    bar; a bad case is reported (file, field, expected, found) and the others go on. Cases already
    prepared with the same config and inputs are skipped unless ``force``. ``cache.json`` lists
    every usable case at the end. Nothing is ever written into ``data_dir``.

    Args:
        data_dir: dataset folder (KiTS19, KiTS21/23, nnU-Net raw or image/label pairs).
        cache_dir: output folder (created); must not be inside or equal to ``data_dir``.
        cfg: preprocessing config.
        workers: worker processes.
        force: redo every case, and accept a cache folder prepared with another config.
        case_ids: only these cases (default: all).
        data_format: ``kits19``, ``kits23``, ``nnunet``, ``pairs`` or ``None``/``auto`` (detect).
        kidney_labels: labels forming the kidney target (default: the format's, see
            :func:`kidneyssl.io.datasets.open_dataset`). The policy is recorded in the cache; a
            cache prepared with another policy is refused like another config.

    Raises:
        DataError: bad ``data_dir``/``cache_dir`` or no cases.
        KidneySSLError: ``cache_dir`` holds a cache prepared with another config (without force).
    """
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    check_outputs([cache_dir], [data_dir], what="output folder", inputs_name="the dataset")  # before any read
    check_output_folder(cache_dir)
    dataset = open_dataset(data_dir, data_format, kidney_labels)
    # ... nor into or around a case file that a link brings in from elsewhere
    check_outputs([cache_dir], [p for c in dataset.cases for p in (c.imaging, c.segmentation)],
                  what="output folder", inputs_name="the dataset")
    for line in dataset.skipped:
        log.warning("%s", line)
    cases = dataset.cases
    unlabeled = [c.case_id for c in cases if c.segmentation is None and c.imaging is not None]
    if unlabeled:
        log.info("%d case(s) without a label file, prepared as unannotated (not used to train or score): %s",
                 len(unlabeled), ", ".join(unlabeled[:5]) + (", ..." if len(unlabeled) > 5 else ""))
    if case_ids is not None:
        wanted = set(case_ids)
        cases = [c for c in cases if c.case_id in wanted]
    return prepare_cases(cases, cache_dir, cfg, workers=workers, force=force, policy=dataset.policy,
                         source={"data_format": dataset.format, "data_dir": str(data_dir.resolve())})


def prepare_cases(cases: Sequence[Case], cache_dir: str | Path, cfg: PreprocessConfig, *, workers: int = 2,
                  force: bool = False, policy: LabelPolicy = KITS19_POLICY,
                  source: dict[str, Any] | None = None) -> PrepareSummary:
    """Preprocess the given cases into ``cache_dir`` (what :func:`prepare_dataset` does once the
    dataset is listed): skip the cases already prepared with this config and these files, run the
    others, write ``cache.json``. A case without a segmentation file is prepared from its image
    alone (no mask is read).

    Args:
        cases: the cases (e.g. scans without masks as ``Case(id, image, None)``).
        cache_dir: output folder (created).
        cfg, workers, force: as :func:`prepare_dataset`.
        policy: the label policy recorded in the cache (and used for the labels read).
        source: extra ``cache.json`` entries saying where the cases come from (``data_dir``,
            ``data_format``).

    Raises:
        KidneySSLError: ``cache_dir`` holds a cache prepared with another config (without force).
    """
    cache_dir = Path(cache_dir)
    cases = list(cases)
    labels_dict = policy.to_dict()
    cfg_dict = config_to_dict(cfg)
    existing = cache_dir / CACHE_JSON
    if existing.is_file() and not force:
        try:
            old_info = json.loads(existing.read_text())
        except ValueError:
            old_info = {}
        diff = config_diff(old_info.get("preprocess", {}), cfg_dict)
        diff += [f"labels.{d}" for d in config_diff(labels_of(old_info), labels_dict)]
        if diff:
            raise KidneySSLError(f"{cache_dir}: holds a cache prepared with another config ("
                                 + "; ".join(diff) + "); rebuild it, or choose another output folder",
                                 remedy=("force", "out"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    for folder in [cache_dir] + [cache_dir / c.case_id for c in cases]:
        remove_stale_temp_files(folder)  # what a killed run left
    start = time.perf_counter()
    summary = PrepareSummary()
    todo: list[Case] = []
    for case in cases:
        if not force and _is_done(case, cache_dir / case.case_id, cfg_dict, labels_dict):
            summary.skipped.append(case.case_id)
        else:
            todo.append(case)
    if summary.skipped:
        log.info("%d case(s) already prepared, skipped", len(summary.skipped))
    results = _run(todo, cache_dir, cfg_dict, workers, labels_dict)
    for case_id, status, reasons, remedy in results:
        if status == "ok":
            summary.ok.append(case_id)
        else:
            summary.failed[case_id] = reasons
            summary.remedy.update(remedy)
            for reason in reasons:
                log.warning("%s", reason)
    summary.seconds = time.perf_counter() - start
    from kidneyssl import __version__

    atomic_write_json(existing, {
        "format_version": FORMAT_VERSION,
        "kidneyssl_version": __version__,
        "preprocess": cfg_dict,
        "labels": labels_dict,
        **(source or {}),
        "cases": summary.cases,
        "failed": summary.to_dict()["failed"],
    })
    log.info("prepare: %s", summary)
    return summary


def _run(todo: list[Case], cache_dir: Path, cfg_dict: dict[str, Any],
         workers: int, labels_dict: dict[str, Any]) -> list[tuple[str, str, list[str], list[str]]]:
    if not todo:
        return []
    cores = available_cpus()
    workers = max(1, min(workers, len(todo)))
    threads = max(1, cores // workers)
    if workers == 1:
        return [prepare_case(c, cache_dir, cfg_dict, threads, labels_dict)
                for c in progress(todo, desc="prepare", unit="case")]
    results = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures: dict[Future, Case] = {
            pool.submit(prepare_case, c, cache_dir, cfg_dict, threads, labels_dict): c for c in todo}
        for fut in progress(as_completed(futures), desc="prepare", total=len(futures), unit="case"):
            case = futures[fut]
            try:
                results.append(fut.result())
            except Exception as err:  # a worker died (e.g. killed for memory): report, go on
                results.append((case.case_id, "failed",
                                [f"{case.case_id}: worker error: {type(err).__name__}: {err}"], []))
    return results


def _init_worker(threads: int) -> None:
    """Keep each worker's BLAS/torch thread pools to its share of the cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
